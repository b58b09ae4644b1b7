"""Small offline stand-ins for the five benchmarks, each row in its benchmark's own dataset format.

Written by the project (not copied from the benchmarks), a handful of items each, so that the offline suite
runs the real scoring code end to end on a box that cannot reach the hub. Every item carries the response a
perfect model would give (``reference_response``); the tests score those at 1.0 through the harness.

Formats, as on the hub:

- ``ifeval`` (google/IFEval): key, prompt, instruction_id_list, kwargs (one dict per instruction). Only
  checkers that need no NLTK data are used (not ``length_constraints:number_sentences`` nor
  ``change_case:capital_word_frequency``, which need ``punkt_tab``; not the ``langdetect`` ones, whose
  answer on short texts is not stable).
- ``gsm8k`` (openai/gsm8k ``main``): question, answer ending in ``#### N``.
- ``math`` (EleutherAI/hendrycks_math): problem, level, type, solution with the answer in ``\\boxed{}``.
- ``humaneval`` (openai/openai_humaneval): task_id, prompt, canonical_solution, test, entry_point.
- ``mbpp`` (google-research-datasets/mbpp ``full``): task_id, text, code, test_list, test_setup_code,
  challenge_test_list.

For the code tasks the reference response is what follows the task's ``gen_prefix`` (the prompt's code
fence is already open): the code, then the closing fence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfflineItem:
    row: dict  # one dataset row, in the benchmark's format
    reference_response: str  # what a model that gets it right answers


def _ifeval(key: int, prompt: str, instructions: list[tuple[str, dict]], response: str) -> OfflineItem:
    row = {"key": key, "prompt": prompt, "instruction_id_list": [i for i, _ in instructions],
           "kwargs": [kw for _, kw in instructions]}
    return OfflineItem(row, response)


IFEVAL = [
    _ifeval(1001, "Write a haiku about autumn leaves. Give it a title wrapped in double angular brackets, such as "
                  "<<poem of joy>>, and do not use any commas in your response.",
            [("detectable_format:title", {}), ("punctuation:no_comma", {})],
            "<<Falling Leaves>>\nRed leaves drift and fall\nquiet paths of gold and rust\nthe old year lets go"),
    _ifeval(1002, "List three benefits of drinking water. Your answer must contain exactly 3 bullet points in "
                  "markdown format, like:\n* This is a point.\nAt the end of your response, please explicitly add "
                  "a postscript starting with P.S.",
            [("detectable_format:number_bullet_lists", {"num_bullets": 3}),
             ("detectable_content:postscript", {"postscript_marker": "P.S."})],
            "* It keeps you hydrated.\n* It helps digestion.\n* It supports clear thinking.\n\n"
            "P.S. Carry a bottle with you."),
    _ifeval(1003, "Describe a lighthouse in fewer than 40 words. Include the keywords storm and beacon, and finish "
                  "your response with the exact phrase \"Is there anything else I can help with?\"",
            [("length_constraints:number_words", {"num_words": 40, "relation": "less than"}),
             ("keywords:existence", {"keywords": ["storm", "beacon"]}),
             ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"})],
            "A white tower stands on the rocks and its beacon sweeps the sea through every storm so that sailors "
            "find their way home. Is there anything else I can help with?"),
    _ifeval(1004, "Name the largest planet in the solar system. Wrap your entire output in JSON format, and do not "
                  "include the words moon or star in the response.",
            [("detectable_format:json_format", {}),
             ("keywords:forbidden_words", {"forbidden_words": ["moon", "star"]})],
            '{"planet": "Jupiter"}'),
    _ifeval(1005, "Write a one-sentence slogan for a bakery and wrap your entire response with double quotation "
                  "marks. Highlight at least 1 section in your answer with markdown, i.e. *highlighted section*.",
            [("startend:quotation", {}), ("detectable_format:number_highlighted_sections", {"num_highlights": 1})],
            '"Fresh bread *baked with love* every single morning."'),
]


def _gsm8k(question: str, solution: str) -> OfflineItem:
    return OfflineItem({"question": question, "answer": solution}, solution)


GSM8K = [
    _gsm8k("Tom has 3 boxes with 12 apples in each box. He gives away 10 apples. How many apples does Tom have left?",
           "Tom starts with 3 * 12 = <<3*12=36>>36 apples.\nAfter giving away 10 he has 36 - 10 = <<36-10=26>>26 "
           "apples.\n#### 26"),
    _gsm8k("A train travels at 60 miles per hour for 3 hours and then at 40 miles per hour for 2 hours. How many "
           "miles does it travel in total?",
           "First it travels 60 * 3 = <<60*3=180>>180 miles.\nThen it travels 40 * 2 = <<40*2=80>>80 miles.\n"
           "In total it travels 180 + 80 = <<180+80=260>>260 miles.\n#### 260"),
    _gsm8k("Maria buys 4 notebooks at $3 each and a pen for $2. She pays with a $20 bill. How much change does "
           "she get?",
           "The notebooks cost 4 * 3 = <<4*3=12>>12 dollars.\nWith the pen she spends 12 + 2 = <<12+2=14>>14 "
           "dollars.\nHer change is 20 - 14 = <<20-14=6>>6 dollars.\n#### 6"),
    _gsm8k("A class has 28 students. One quarter of them walk to school and the rest take the bus. How many "
           "students take the bus?",
           "28 / 4 = <<28/4=7>>7 students walk.\nSo 28 - 7 = <<28-7=21>>21 students take the bus.\n#### 21"),
    _gsm8k("Sam reads 15 pages every day. How many days does he need to finish a book of 1,200 pages?",
           "He needs 1200 / 15 = <<1200/15=80>>80 days.\n#### 80"),
]


def _math(problem: str, solution: str, answer: str, level: str, kind: str) -> OfflineItem:
    response = f"{solution}\nFinal Answer: The final answer is ${answer}$. I hope it is correct."
    return OfflineItem({"problem": problem, "level": level, "type": kind, "solution": solution}, response)


MATH = [
    _math("If $3x + 7 = 22$, what is the value of $x$?",
          "Subtracting 7 from both sides gives $3x = 15$, so $x = \\boxed{5}$.", "5", "Level 1", "Algebra"),
    _math("What is $\\frac{1}{2} + \\frac{1}{3}$? Express your answer as a common fraction.",
          "With the common denominator 6, $\\frac{1}{2} + \\frac{1}{3} = \\frac{3}{6} + \\frac{2}{6} = "
          "\\boxed{\\frac{5}{6}}$.", "\\frac{5}{6}", "Level 1", "Prealgebra"),
    _math("What is the remainder when $2^{10}$ is divided by $7$?",
          "Since $2^3 = 8 \\equiv 1 \\pmod 7$, we have $2^{10} = (2^3)^3 \\cdot 2 \\equiv 2 \\pmod 7$, so the "
          "remainder is $\\boxed{2}$.", "2", "Level 2", "Number Theory"),
    _math("In how many ways can 2 books be chosen from a shelf of 6 different books?",
          "The number of ways is $\\binom{6}{2} = \\frac{6 \\cdot 5}{2} = \\boxed{15}$.", "15", "Level 2",
          "Counting & Probability"),
    _math("A right triangle has legs of length 6 and 8. What is the length of its hypotenuse?",
          "By the Pythagorean theorem the hypotenuse is $\\sqrt{6^2 + 8^2} = \\sqrt{100} = \\boxed{10}$.", "10",
          "Level 1", "Geometry"),
]


def _humaneval(n: int, prompt: str, solution: str, asserts: list[str], entry_point: str) -> OfflineItem:
    test = "\n\nMETADATA = {}\n\n\ndef check(candidate):\n" + "".join(f"    assert {a}\n" for a in asserts)
    row = {"task_id": f"OfflineEval/{n}", "prompt": prompt, "canonical_solution": solution, "test": test,
           "entry_point": entry_point}
    return OfflineItem(row, solution + "```\n")


HUMANEVAL = [
    _humaneval(0,
               'def add_numbers(a: int, b: int) -> int:\n    """Return the sum of a and b.\n    >>> add_numbers(2, 3)\n'
                  '    5\n    """\n',
               "    return a + b\n", ["candidate(2, 3) == 5", "candidate(-1, 1) == 0", "candidate(0, 0) == 0"],
               "add_numbers"),
    _humaneval(1, 'def is_palindrome(text: str) -> bool:\n    """Check whether the text reads the same backwards.\n'
                  "    >>> is_palindrome('level')\n    True\n    >>> is_palindrome('abc')\n    False\n    \"\"\"\n",
               "    return text == text[::-1]\n",
               ["candidate('') is True", "candidate('level') is True", "candidate('abc') is False"], "is_palindrome"),
    _humaneval(2, 'def count_vowels(s: str) -> int:\n    """Count the vowels a, e, i, o, u (either case) in s.\n'
                  "    >>> count_vowels('Hello')\n    2\n    \"\"\"\n",
               "    return sum(1 for ch in s.lower() if ch in 'aeiou')\n",
               ["candidate('Hello') == 2", "candidate('xyz') == 0", "candidate('AEIOU') == 5"], "count_vowels"),
    _humaneval(3, "from typing import List\n\n\ndef running_max(numbers: List[int]) -> List[int]:\n"
                  '    """Return the list of the largest element seen so far at each position.\n'
                  "    >>> running_max([1, 3, 2, 5])\n    [1, 3, 3, 5]\n    \"\"\"\n",
               "    result = []\n    for x in numbers:\n        result.append(x if not result else "
               "max(result[-1], x))\n"
               "    return result\n",
               ["candidate([]) == []", "candidate([1, 3, 2, 5]) == [1, 3, 3, 5]", "candidate([4, 1]) == [4, 4]"],
               "running_max"),
]


def _mbpp(task_id: int, text: str, code: str, tests: list[str]) -> OfflineItem:
    row = {"task_id": task_id, "text": text, "code": code, "test_list": tests, "test_setup_code": "",
           "challenge_test_list": []}
    return OfflineItem(row, code + "\n```\n")


MBPP = [
    _mbpp(9001, "Write a function to find the maximum of three numbers.",
          "def max_of_three(a, b, c):\n    return max(a, b, c)",
          ["assert max_of_three(1, 2, 3) == 3", "assert max_of_three(5, 2, 1) == 5",
           "assert max_of_three(-1, -7, -3) == -1"]),
    _mbpp(9002, "Write a python function to reverse the order of the words in a given string.",
          "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
          ["assert reverse_words('hello world') == 'world hello'", "assert reverse_words('a b c') == 'c b a'",
           "assert reverse_words('python') == 'python'"]),
    _mbpp(9003, "Write a function to compute the sum of the squares of the first n natural numbers.",
          "def sum_of_squares(n):\n    return sum(i * i for i in range(1, n + 1))",
          ["assert sum_of_squares(3) == 14", "assert sum_of_squares(1) == 1", "assert sum_of_squares(0) == 0"]),
    _mbpp(9004, "Write a function to check whether a given number is even.",
          "def is_even(n):\n    return n % 2 == 0",
          ["assert is_even(4) == True", "assert is_even(7) == False", "assert is_even(0) == True"]),
]

OFFLINE_ITEMS: dict[str, list[OfflineItem]] = {
    "ifeval": IFEVAL, "gsm8k": GSM8K, "math": MATH, "humaneval": HUMANEVAL, "mbpp": MBPP,
}

# The field that names an item within its benchmark.
ID_FIELDS = {"ifeval": "key", "gsm8k": "question", "math": "problem", "humaneval": "task_id", "mbpp": "task_id"}


def reference_response(benchmark: str, doc: dict) -> str:
    """The correct response to ``doc`` (a row of ``benchmark``, as the harness hands it over)."""
    field = ID_FIELDS[benchmark]
    for item in OFFLINE_ITEMS[benchmark]:
        if item.row[field] == doc[field]:
            return item.reference_response
    raise KeyError(f"{benchmark}: no offline item with {field}={doc[field]!r}")
