"""One round of Evol-Instruct (``step.run``) and the rounds' report (``report.run``)."""
