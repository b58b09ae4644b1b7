"""Auto Evol-Instruct's method optimization: the evolving method improved on a development set (``step.run``;
``result``: the optimization's record)."""
