"""Whether a rewrite gives its task away: the ``hands_over_method`` elimination rule. A rewrite that states the
formula, the operations, the equations or the algorithm that solve it, or its own solution code, asks less of the
model than its parent did (the data would teach the method inside the question). Pure functions over text.

What counts (lower-case prose; each only when the parent does not hold it already):

- a formula: "using the formula Time = Volume / Rate", "the formula: P = 4 x side", an equation between words
  ("Sale Price = Original Price - ...");
- the operations, in a solver's or a textbook's voice: "by multiplying 3 by 4", "can be calculated by ...",
  "we need to calculate ... and subtract ...", "follow these steps", a numbered list of calculation steps;
- the model set up for it: "set up the equations 50 = a + b";
- its intermediate results: "3 dozen cookies, which is equal to 36 cookies", "resulting in 4 shorts";
- its steps as orders: three or more sentences that open with an operation ("Calculate the cost ... Calculate the
  price ... Finally, subtract ...");
- the algorithm: "by using a set to store the distinct values";
- solution code: a function with its body (``def f(...):`` and a ``return``) or a fenced block the parent lacks.

A rewrite that asks for a method ("Write it recursively", "Use dynamic programming") asks for more, and passes.

>>> hands_over_method("A tank holds 500 litres and drains at 25 litres per minute. How long until it is empty?",
...                   "How long does the tank take to empty, using the formula Time = Volume / Rate?")
True
>>> hands_over_method("Write a function that reverses a list.", "Write a recursive function that reverses a list.")
False
"""

from __future__ import annotations

import re

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
    r"(?:calculate|compute|multiply|divide|subtract|add|use|find|determine|set up|solve)\b",
    r"\bfollow(?:ing)? (?:these|the following|this) steps\b|\bstep[- ]by[- ]step approach\b",
    r"(?:^|\n)\s*(?:1[.)]|step 1:?)\s*(?:calculate|compute|multiply|divide|subtract|add|determine|identify|find)\b",
    r"\bset up (?:the |an |two )?equations?\b|\bsolve (?:the|this|these) equations?\b",
    r"(?:\b(?:which|that) (?:amounts to|is equal to|equals|comes to|adds up to|gives)|\bresulting in|\bthis gives"
    r"(?: us| you)?) \$?\d",  # an intermediate result: "3 dozen, which is equal to 36"
    r"\bby using (?:a|an|the) \w+(?: \w+)? to\b",
))
# solution code: a function definition whose body returns (Python), in or out of a fence
_FUNCTION_BODY = re.compile(r"^\s*def \w+\(.*\)\s*(?:->[^:]+)?:\s*$(?:\n(?:[ \t]+.*|\s*))*?\n[ \t]+return\b",
                            re.MULTILINE)


# a sentence that opens with an operation: one step of a solution given as an order
_STEP_ORDER = re.compile(r"(?:^|[.!?:]\s+|\n\s*|\b(?:finally|then|next),?\s+)"
                         r"(?:calculate|compute|multiply|divide|subtract|add up|sum up|determine)\b")
STEP_ORDERS = 3  # sentences that open with an operation: the steps of a solution


def method_phrases_found(text: str) -> list[str]:
    """The :data:`METHOD_PATTERNS` matches of ``text``'s prose (fenced code left out), lower-case, and "steps"
    when :data:`STEP_ORDERS` or more of its sentences open with an operation."""
    prose = FENCED_CODE.sub(" ", text).lower()
    found = [m.group(0) for p in METHOD_PATTERNS for m in p.finditer(prose)]
    return found + ["steps"] if len(_STEP_ORDER.findall(prose)) >= STEP_ORDERS else found


def holds_solution_code(text: str) -> bool:
    """Whether ``text`` holds a fenced code block or a function definition with a body that returns."""
    return bool(FENCED_CODE.search(text)) or _FUNCTION_BODY.search(text) is not None


def hands_over_method(parent: str, evolved: str) -> bool:
    """Whether ``evolved`` states a formula, the operations, the equations or the algorithm that solve it, or
    solution code, that ``parent`` did not (module doc).

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
    if holds_solution_code(evolved) and not holds_solution_code(parent):
        return True
    given = set(method_phrases_found(parent))
    return any(phrase not in given for phrase in method_phrases_found(evolved))
