"""Scheduled routes and their Cloud Scheduler jobs, all in one package.

* ``cron.py``: when a route fires. Its five-field cron expression, its time zone, the
  daylight-saving rules, and the next and recent fire times (``next_fire_time``,
  ``recent_fire_times``, ``describe_schedule``).
* ``firing.py``: what a firing does. The message a scheduled run carries
  (``scheduled_message``, which Cloud Scheduler jobs publish), ``fire_scheduled`` (one firing
  now) and ``LocalScheduler``, the local cron loop behind ``manage.py tasks_scheduler``.
* ``jobs.py``: the Cloud Scheduler API calls staff make on a job that exists: Run now, pause,
  resume and read it (``run_now``, ``pause_job``, ``resume_job``, ``get_job``).
* ``health.py``: did each job fire when its schedule said (``schedule_health``,
  ``health_report``).

Elsewhere: the job the provisioning plan wants to exist (``desired_job``, compared with the
real one) is provisioning's, in ``gyrinx_tasks/provisioning/scheduler.py``; the scheduled-jobs
admin page is ``gyrinx_tasks/admin/schedules.py``; ``manage.py tasks_scheduler`` is a thin
command over ``firing.LocalScheduler``. This package re-exports nothing: import from the
module that holds the name.
"""
