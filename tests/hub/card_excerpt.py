"""The README's excerpt of a model card, written from a real card.

`python tests/hub/card_excerpt.py runs/fmnist-maxsup/README.md` prints the block that goes between the README's
`<!-- card-excerpt:start -->` and `<!-- card-excerpt:end -->` markers; `tests/hub/test_readme_card.py` writes it from
the card of a short run of the README's main command and checks that the README holds it.
"""

import sys

MARKERS = ("<!-- card-excerpt:start -->", "<!-- card-excerpt:end -->")
METRICS_SHOWN = 3


def excerpt(card: str, metrics_shown: int = METRICS_SHOWN) -> str:
    """The README's block for `card` (a card's text): its metadata, each result's first `metrics_shown` metrics with
    their values elided (they change from run to run), and its title, in a Markdown code fence."""
    lines = card.splitlines()
    end = lines.index("---", 1)
    kept, in_metrics, shown = [], False, 0
    for line in lines[: end + 1]:
        indent = len(line) - len(line.lstrip())
        if in_metrics and indent < 4:
            in_metrics = False
        if in_metrics:
            if line.startswith("    - type:"):
                shown += 1
                if shown == metrics_shown + 1:
                    kept.append("    # ... (cut here)")
            if shown > metrics_shown:
                continue
            if line.strip().startswith("value:"):
                line = line.split("value:")[0] + "value: ..."
        elif line == "    metrics:":
            in_metrics, shown = True, 0
        kept.append(line)
    title = next(line for line in lines[end + 1 :] if line.startswith("# "))
    return "\n".join(["````markdown", *kept, "", title, "", "(...)", "````"])


def readme_excerpt(readme: str) -> str | None:
    """What the README holds between the markers, without the blank lines around it; `None` without the markers."""
    if not all(marker in readme for marker in MARKERS):
        return None
    start, end = (readme.index(marker) for marker in MARKERS)
    return readme[start + len(MARKERS[0]) : end].strip("\n")


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as card_file:
        print(excerpt(card_file.read()))
