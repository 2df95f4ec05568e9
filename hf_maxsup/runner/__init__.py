"""What the recipe scripts in `recipes/` share: they call [`start`], build their task's model and data on the
[`RunPlan`] it returns, and call [`run`].

- `parse`: the flags (or a config file), the recipes' defaults, the launch checks, logging.
- `output_dir`: the lock, complete checkpoints, overwrite refusal, which checkpoint a run resumes, which model an
  evaluation-only run evaluates (no torch import).
- `checkpoint_files`: whether a checkpoint's files can be read, checked without loading them (no torch import).
- `storage`: whether a run can write where it writes (`--output_dir`, the datasets cache), and a full disk named.
- `resume`: a resumed checkpoint's loss history and length, whether its weights fit, and whether a saved classifier
  fits the data it evaluates.
- `engines`: the engine's name and the FSDP fixes.
- `flow`: `start` -> `RunPlan` -> `run`, and the helpers a script builds with.

Each module's other public names are imported from the module itself.

The names below are imported on first use, so that `hf_maxsup.runner.output_dir` (which `compare` uses) does not pull
in torch.
"""

from ..lazy import lazy_exports

# The modules of this package, and the names a recipe script (or a tool) uses of each.
_EXPORTS = {
    "flow": [
        "RunPlan",
        "start",
        "run",
        "build_with_shared_tokenizer",
        "card_arguments",
        "data_source",
        "maybe_lora",
        "reliability_diagram_writer",
        "tokenize",
    ],
    "engines": ["describe_engine", "fsdp_layers_to_wrap", "prepare_engine"],
    "output_dir": ["earlier_run_files", "last_complete_checkpoint"],
    "parse": ["parse_args", "recipe_defaults"],
    "resume": ["labelled_data"],
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
