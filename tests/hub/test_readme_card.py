"""The README's card excerpt is that of a real card: a short run of the README's main command writes the card, and
the README holds its excerpt between `<!-- card-excerpt:start -->` and `<!-- card-excerpt:end -->` (#22.5)."""

from _env import ROOT
from _runs import run_recipe
from card_excerpt import MARKERS, excerpt, readme_excerpt

# The README's main command, as printed there, then what makes it short.
MAIN_COMMAND = (
    "--loss maxsup --do_train --do_eval --do_predict --num_train_epochs 4 --learning_rate 2e-3 "
    "--per_device_train_batch_size 64 --per_device_eval_batch_size 256 --weight_decay 0.05 --lr_scheduler_type cosine "
    "--warmup_steps 0.05 --augment false --save_strategy epoch --save_total_limit 1"
).split()
SHORT = "--max_steps 2 --max_train_samples 64 --max_eval_samples 32 --max_predict_samples 32 --report_to none".split()


def test_the_readme_holds_the_excerpt_of_a_real_card(tmp_path):
    output_dir = tmp_path / "fmnist-maxsup"  # the main command's folder name, which names the card
    run_recipe("image_classification", *MAIN_COMMAND, "--output_dir", str(output_dir), *SHORT, "--disable_tqdm", "true")
    expected = excerpt((output_dir / "README.md").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_excerpt(readme) == expected, (
        f"README.md's card excerpt differs from the card a run writes: put this between {MARKERS[0]} and "
        f"{MARKERS[1]}\n" + expected
    )
