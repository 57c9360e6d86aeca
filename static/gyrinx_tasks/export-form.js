/* gyrinx_tasks admin, export page: django-import-export's "Select all" checkbox has no id, so
 * its <label for="select-all-toggle"> names nothing and screen readers announce an unlabelled
 * checkbox. Give each such checkbox an id and point its label at it. */
(function () {
    "use strict";
    document.querySelectorAll("input.select-toggle").forEach(function (box, index) {
        if (box.id) {
            return;
        }
        box.id = "gyrinx-select-all-" + index;
        var label = box.parentElement && box.parentElement.querySelector("label[for='select-all-toggle']");
        if (label) {
            label.htmlFor = box.id;
        } else {
            box.setAttribute("aria-label", "Select all");
        }
    });
})();
