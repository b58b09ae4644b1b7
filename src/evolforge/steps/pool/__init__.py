"""The pool step: the scenario's items (evolved answers or AutoIF answers) as the table the curation steps read
(``step.run``)."""
