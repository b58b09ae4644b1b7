"""Whether a rewrite gives its task away: the ``hands_over_method`` elimination rule. A rewrite that states the
formula, the operations, the equations or the algorithm that solve it, or its own solution code, asks less of the
model than its parent did (the data would teach the method inside the question). Pure functions over text.

What counts (lower-case prose, code left out; each only when the parent does not hold it already):

- a formula: "using the formula Time = Volume / Rate", "the formula: P = 4 x side", an equation between words
  ("Sale Price = Original Price - ...");
- the operations, in a solver's or a textbook's voice: "by multiplying 3 by 4", "can be calculated by ...",
  "we need to calculate ... and subtract ...", "follow these steps", a numbered list of calculation steps;
- the model set up for it: "set up the equations 50 = a + b";
- its intermediate results: "3 dozen cookies, which is equal to 36 cookies", "resulting in 4 shorts";
- its steps as orders: three or more sentences that open with an operation ("Calculate the cost ... Calculate the
  price ... Finally, subtract ...");
- the algorithm: "by using a set to store the distinct values";
- solution code (:func:`hands_over_code`): a Python function with a body that returns, named as the function the
  task asks for (or, where it names none, the rewrite's only such function), that the rewrite does not present as
  erroneous and the parent does not give as code to work on.

A rewrite that asks for a method ("Write it recursively", "Use dynamic programming") asks for more, and passes; so
does one that adds code of another kind, as Evol-Instruct's code methods do (WizardCoder): an input example, a stub
to fill in, or "a piece of erroneous code as a reference to increase misdirection".

>>> hands_over_method("A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?",
...                   "How long does the tank take to empty, using the formula Time = Volume / Rate?")
True
>>> hands_over_method("Write a function that reverses a list.", "Write a recursive function that reverses a list.")
False
"""

from __future__ import annotations

import re
from typing import NamedTuple

from evolforge.core.text import FENCED_CODE

# lower-case prose patterns that hand the method over (module doc)
METHOD_PATTERNS = tuple(re.compile(p) for p in (
    r"\b(?:using|use|apply|with|by) (?:the |this |a |following )*formula\b",
    r"\bthe formula(?: for [\w ]{1,40})?(?: is|:)",
    r"\b[a-z][a-z ]{0,30}[a-z] = [a-z(][^=\n.]{0,60}?[/*×÷+-] ?[a-z(\d]",  # Time = Volume / Rate
    r"\\\[|\\times\b|\\frac\b|\\boxed\b",  # LaTeX: a worked formula
    r"\bby (?:multiplying|dividing|subtracting|adding|summing|doubling|halving) (?:the|it|them|its|their|this|these|"
    r"all|each|\$?\d)",
    r"\b(?:can|could|will|is|are) (?:be )?(?:calculated|computed|found|determined|obtained|given) by\b",
    r"\b(?:we|you) (?:first )?(?:need to|can|should|must|will|have to) (?:first )?"
    r"(?:calculate|compute|multiply|divide|subtract|add|use|find|determine|set up|solve)\b"
    r"(?! (?:the|this|it) (?:problem|task|question)\b| it\b)",  # "you can solve the problem in O(n)": a bound
    r"\bfollow(?:ing)? (?:these|the following|this) steps\b|\bstep[- ]by[- ]step approach\b",
    r"(?:^|\n)\s*(?:1[.)]|step 1:?)\s*(?:calculate|compute|multiply|divide|subtract|add|determine|identify|find)\b",
    r"\bset up (?:the |an |two )?equations?\b|\bsolve (?:the|this|these) equations?\b",
    r"(?:\b(?:which|that) (?:amounts to|is equal to|equals|comes to|adds up to|gives)|\bresulting in|\bthis gives"
    r"(?: us| you)?) \$?\d",  # an intermediate result: "3 dozen, which is equal to 36"
    r"\bby using (?:a|an|the) \w+(?: \w+)? to\b",
))

# a sentence that opens with an operation: one step of a solution given as an order
_STEP_ORDER = re.compile(r"(?:^|[.!?:]\s+|\n\s*|\b(?:finally|then|next),?\s+)"
                         r"(?:calculate|compute|multiply|divide|subtract|add up|sum up|determine)\b")
STEP_ORDERS = 3  # sentences that open with an operation: the steps of a solution

# a line of code outside a fence: a Python definition and its indented body, or a statement on a line of its own
# (an assignment to a name, print / return / import, a block opener); prose keeps words on both sides of an "="
_DEF_LINE = re.compile(r"^([ \t]*)(?:async\s+)?def (\w+)\s*\(.*$", re.MULTILINE)
_CODE_LINE = re.compile(r"^[ \t]*(?:[\w.]+(?:\[[^\]\n]*\])?\s*(?:[-+*/]?=)(?!=)\s*\S|(?:print|return|import|from|class|"
                        r"for|while|if|elif|else|try|except|with)\b.*[:)]?\s*$|#|[ \t]{4,}\S|[}\]);]+\s*$)")
# how a rewrite presents the code that follows (the last such words before a function win): as erroneous, or as the
# solution
_ERRONEOUS = re.compile(r"erro?r?neous|incorrect|buggy|\bbugs?\b|misdirection|\bwrong\b|flawed|mistakes?\b|"
                        r"\berrors?\b|does not work|doesn't work|not working|attempts? to", re.IGNORECASE)
_SOLUTION = re.compile(r"\bcorrect(?:ed)?(?: [\w-]+){0,3}? (?:code|version|implementation|function|solution)|"
                       r"\bsolution\b|\bfixed (?:code|version|implementation|function)|"
                       r"\bhere is (?:the|a|an) (?:code|function|implementation)|\buse this code\b", re.IGNORECASE)
# a task about code it gives (rewrite, fix, analyse it ...): code in its rewrite is material to work on
_EDIT = re.compile(r"\b(?:rewrite|re-write|modify|edit|update|fix|debug|convert|translate|analy[sz]e|optimi[sz]e|"
                   r"refactor|improve|amend|explain|correct|output of)\b")
_GIVEN = re.compile(r"\b(?:the|this|these|following|given|existing|provided|above|below)\b(?: \w+){0,3} "
                    r"(?:code|function|snippet|program|implementation|algorithm|class|script|query)\b|"
                    r"\b(?:code|function|snippet|program) (?:below|above|provided)\b")
# the name of the function a task asks for: `name(`, a function called / named 'name', def name( in prose
_ASKED = re.compile(r"`(\w+)\s*\(|\b(?:function|method)\s+(?:called|named)\s+[`'\"]?(\w+)|"
                    r"\b(?:function|method)\s+[`'\"](\w+)[`'\"]|\b(?:function|method)\s+(\w+)\(")


class Function(NamedTuple):
    """A Python function definition found in a text."""

    name: str
    source: str       # its def line and body, as written
    returns: bool     # its body returns a value
    erroneous: bool   # the text presents it as erroneous (its own comments or the words before it)


def python_functions(text: str) -> list[Function]:
    """The Python function definitions of ``text`` (fenced or not), in order, each with its body (the lines
    indented under it) and how the text presents it: the last of :data:`_ERRONEOUS` or :data:`_SOLUTION`'s words
    between the previous function and this one decide, and a function with no such words takes the previous one's.

    >>> [(f.name, f.returns, f.erroneous) for f in python_functions(
    ...     "Erroneous code:\\ndef f(x):\\n    return x\\n\\nCorrect code:\\ndef g(x):\\n    pass")]
    [('f', True, True), ('g', False, False)]
    """
    found: list[Function] = []
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    previous_end, erroneous = 0, False
    for match in _DEF_LINE.finditer(text):
        first = offsets.index(match.start()) if match.start() in offsets else None
        if first is None:
            continue
        indent, last = len(match.group(1).expandtabs()), first + 1
        while last < len(lines) and (not lines[last].strip() or
                                     len(lines[last]) - len(lines[last].lstrip(" \t")) > indent):
            last += 1
        source = "".join(lines[first:last]).rstrip()
        before = text[previous_end:match.start()]
        said = [(m.start(), True) for m in _ERRONEOUS.finditer(before)] + [
            (m.start(), False) for m in _SOLUTION.finditer(before)]
        erroneous = max(said)[1] if said else erroneous
        comments = " ".join(line.split("#", 1)[1] for line in source.splitlines()[1:] if "#" in line)
        own = erroneous or bool(_ERRONEOUS.search(comments))
        body = source.split("\n", 1)[1] if "\n" in source else ""
        found.append(Function(match.group(2), source, re.search(r"^\s+return\b[ \t]*\S", body, re.MULTILINE)
                              is not None, own))
        previous_end = offsets[last]
    return found


def prose_of(text: str) -> str:
    """``text`` without its code: fenced blocks, Python definitions with their bodies and lines that read as code
    (:data:`_CODE_LINE`), so that a formula in code is not taken for one in words."""
    text = FENCED_CODE.sub(" ", text)
    for function in python_functions(text):
        text = text.replace(function.source, " ")
    return "".join(line for line in text.splitlines(keepends=True) if not _CODE_LINE.match(line))


def works_on_given_code(task: str) -> bool:
    """Whether ``task`` asks to work on code it gives or points to (rewrite, fix, analyse the following code ...),
    or defines a function itself: code in a rewrite of it is material, not a solution."""
    low = task.lower()
    return bool(_EDIT.search(low) and _GIVEN.search(low)) or bool(python_functions(task))


def asked_functions(text: str) -> set[str]:
    """The names of the functions ``text`` asks for (:data:`_ASKED`).

    >>> sorted(asked_functions("Write a Python function `digit_sum(n)`; a function called 'carry' may help."))
    ['carry', 'digit_sum']
    """
    return {name for match in _ASKED.finditer(text) for name in match.groups() if name}


def hands_over_code(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` holds code that solves the task: a Python function with a body that returns a value,
    not presented as erroneous and not given by ``parent``, named as a function the task asks for or, where it
    names none, the only such function of the rewrite. Never for a task that works on code it gives
    (:func:`works_on_given_code`).

    >>> hands_over_code("Write a Python function `digit_sum(n)`.",
    ...                 "Write it:\\n```python\\ndef digit_sum(n):\\n    return sum(map(int, str(n)))\\n```")
    True
    >>> hands_over_code("Write a function that sums a list.", "Write a function that sums a list. Erroneous "
    ...                 "code as a reference:\\ndef total(xs):\\n    return xs[0]")
    False
    """
    if works_on_given_code(parent):
        return False
    solutions = [f for f in python_functions(evolved) if f.returns and not f.erroneous and f.source not in parent]
    asked = asked_functions(parent + "\n" + prose_of(evolved))
    if asked:
        return any(f.name in asked for f in solutions)
    return len(solutions) == 1


def method_phrases_found(text: str) -> list[str]:
    """The :data:`METHOD_PATTERNS` matches of ``text``'s prose (:func:`prose_of`), lower-case, and "steps" when
    :data:`STEP_ORDERS` or more of its sentences open with an operation."""
    prose = prose_of(text).lower()
    found = [m.group(0) for p in METHOD_PATTERNS for m in p.finditer(prose)]
    return found + ["steps"] if len(_STEP_ORDER.findall(prose)) >= STEP_ORDERS else found


def hands_over_method(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` states a formula, the operations, the equations or the algorithm that solve it, or
    solution code (:func:`hands_over_code`), that ``parent`` did not (module doc).

    >>> hands_over_method("Write a Python function `digit_sum(n)`.",
    ...                   "Write it:\\n```python\\ndef digit_sum(n):\\n    return sum(map(int, str(n)))\\n```")
    True
    >>> hands_over_method("The sum of two numbers is 50 and their difference is 12. What are the numbers?",
    ...                   "Define two variables, a and b, and set up the equations 50 = a + b and b = a + 12.")
    True
    >>> hands_over_method("A shirt costs $40. What is the price after 25% off?",
    ...                   "A shirt costs $40. What is the price after 25% off and a further 10% off that?")
    False
    """
    if hands_over_code(parent, evolved):
        return True
    given = set(method_phrases_found(parent))
    return any(phrase not in given for phrase in method_phrases_found(evolved))
