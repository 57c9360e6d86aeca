/* gyrinx_tasks admin: what every HTMX request on our pages does when it does not succeed.
 *
 * htmx 2 swaps nothing for a 4xx or 5xx answer, so without this a refused or failed click
 * shows nothing at all; and a request whose session expired is redirected to the login page,
 * which htmx would paste into a table cell. Here, once for every page:
 *   - an answer that is the login page becomes a full navigation to it, with ?next= set to the
 *     page the user is on, so logging in brings them back;
 *   - any other 4xx/5xx answer, a network failure or a timeout leaves the page as it was and
 *     shows a short sentence next to the element that made the request (a text/plain answer
 *     of one sentence is shown as it is). The sentence goes away at that element's next request.
 * Loaded with `defer` after htmx by admin/gyrinx_tasks/page.html and the templates that load htmx.
 */
(function () {
    "use strict";
    var script = document.currentScript;
    var loginPath = (script && script.dataset.loginUrl) || "/admin/login/";
    var NOTE = "gyrinx-htmx-error";

    var SENTENCES = {
        400: "The server could not accept this request (400). Reload the page and try again.",
        403: "Not allowed (403): your account lacks the permission for this, or the page is " +
             "out of date. Reload the page and try again.",
        404: "Not found (404): this was removed or renamed since the page loaded. Reload the page.",
        409: "Conflict (409): this changed since the page was loaded. Reload the page to see " +
             "its current state before trying again.",
        429: "The server is busy (429). Nothing was changed; wait a moment and try again.",
        5: "Server error: the action may not have happened. Reload the page to see the current " +
           "state; if it persists, check the server's logs."
    };

    function sentenceFor(xhr) {
        var status = xhr.status;
        var type = xhr.getResponseHeader("Content-Type") || "";
        var text = typeof xhr.responseText === "string" ? xhr.responseText.trim() : "";
        // A view that answers a plain sentence (a bound it enforces, say) knows best.
        if (type.indexOf("text/plain") === 0 && text && text.length <= 300) {
            return text + " (" + status + ")";
        }
        if (SENTENCES[status]) {
            return SENTENCES[status];
        }
        if (status >= 500) {
            return SENTENCES[5].replace("Server error", "Server error (" + status + ")");
        }
        return "The request failed (" + status + "). Reload the page and try again.";
    }

    function clear(elt) {
        var note = elt && elt._gyrinxNote;
        if (note && note.parentNode) {
            note.parentNode.removeChild(note);
        }
        if (elt) {
            elt._gyrinxNote = null;
        }
    }

    function show(elt, text) {
        if (!elt || !document.body.contains(elt)) {
            elt = document.getElementById("content-main") || document.body;
        }
        clear(elt);
        var note = document.createElement("p");
        note.className = NOTE + " errornote";
        note.setAttribute("role", "alert");
        note.textContent = text;
        // Next to what was clicked or polled, never in place of it: the row stays as it was.
        if (elt.matches("form")) {
            elt.appendChild(note);
        } else if (elt.matches("td, th, div, li, fieldset, section")) {
            elt.insertBefore(note, elt.firstChild);
        } else {
            elt.insertAdjacentElement("afterend", note);
        }
        elt._gyrinxNote = note;
    }

    function isLoginPage(xhr) {
        if (!xhr.responseURL) {
            return false;
        }
        try {
            return new URL(xhr.responseURL, window.location.href).pathname === loginPath;
        } catch (e) {
            return false;
        }
    }

    function goToLogin() {
        var here = window.location.pathname + window.location.search;
        window.location.assign(loginPath + "?next=" + encodeURIComponent(here));
    }

    document.addEventListener("htmx:beforeRequest", function (evt) {
        clear(evt.detail.elt);
    });

    document.addEventListener("htmx:beforeSwap", function (evt) {
        var xhr = evt.detail.xhr;
        if (isLoginPage(xhr)) {
            // The session expired (or the user logged out elsewhere): the admin redirected
            // this request to its login page. Go there for real, and come back afterwards.
            evt.detail.shouldSwap = false;
            evt.detail.isError = false;
            goToLogin();
        }
    });

    document.addEventListener("htmx:responseError", function (evt) {
        show(evt.detail.elt, sentenceFor(evt.detail.xhr));
    });

    document.addEventListener("htmx:sendError", function (evt) {
        show(evt.detail.elt, "The server could not be reached: nothing was changed. Check " +
             "the connection and try again.");
    });

    document.addEventListener("htmx:timeout", function (evt) {
        show(evt.detail.elt, "The server took too long to answer; the action may not have " +
             "happened. Reload the page to see the current state.");
    });
})();
