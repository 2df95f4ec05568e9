"""What the Hub tests share: a fake Hub at the HTTP boundary, and a tiny MaxSupTrainer that evaluates, saves and can
push. The `serve` fixture that routes huggingface_hub to a FakeHub is in conftest.py."""

import base64
import json

from _tiny import collate, tiny_bert, tiny_dataset
from huggingface_hub.utils import httpx  # huggingface_hub's HTTP client: httpx in 1.x, httpx2 in 2.x
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_maxsup import MaxSupTrainer, MaxSupTrainingArguments

NUM_LABELS = 6  # > 5, so that top-5 accuracy is computed too
# The Hub tests' arguments: CPU, seeded, no reporting.
COMMON = {"report_to": [], "use_cpu": True, "seed": 0, "disable_tqdm": True, "per_device_train_batch_size": 8}


def tiny_tokenizer():
    """A word-level tokenizer of the tiny vocabulary (w2 ... w49), so that a saved or pushed run includes one."""
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 50)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]")


def make_trainer(output_dir, compute_metrics=None, model=None, **kwargs):
    """A MaxSupTrainer of 2 steps on a tiny BERT of `NUM_LABELS` labels, evaluating every step and saving at the end;
    `kwargs` override its arguments."""
    schedule = {"max_steps": 2, "eval_strategy": "steps", "eval_steps": 1, "save_strategy": "steps", "save_steps": 2}
    args = MaxSupTrainingArguments(output_dir=str(output_dir), **{**schedule, **COMMON, **kwargs})
    return MaxSupTrainer(
        model=model or tiny_bert(NUM_LABELS),
        args=args,
        train_dataset=tiny_dataset(16, NUM_LABELS),
        eval_dataset=tiny_dataset(8, NUM_LABELS, seed=1),
        data_collator=collate,
        compute_metrics=compute_metrics,
        processing_class=tiny_tokenizer(),
    )


class FakeHub:
    """Answers huggingface_hub's HTTP requests like the Hub (create repo, validate README, preupload, commit) and
    records the commits, or fails every request like an unreachable Hub (`mode="unreachable"`) or one refusing
    the token (`mode="unauthorized"`)."""

    def __init__(self, mode="ok"):
        self.mode, self.commits, self.authorizations = mode, [], set()

    def __call__(self, request):
        if self.mode == "unreachable":
            raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)
        if self.mode == "unauthorized":
            return httpx.Response(401, json={"error": "Invalid username or password."})
        path, body = request.url.path, request.read()
        if path.startswith("/api/models/") or path == "/api/repos/create":
            self.authorizations.add(request.headers.get("authorization"))
        if path == "/api/repos/create":
            return httpx.Response(200, json={"url": "https://huggingface.co/user/model", "name": "user/model"})
        if path == "/api/validate-yaml":
            return httpx.Response(200, json={})
        if path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            return httpx.Response(
                200,
                json={"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
            )
        if path.endswith("/commit/main"):
            lines = [json.loads(line) for line in body.decode().splitlines()]
            self.commits.append(
                {
                    "summary": lines[0]["value"]["summary"],
                    "files": {
                        line["value"]["path"]: base64.b64decode(line["value"]["content"])
                        for line in lines
                        if line["key"] == "file"
                    },
                }
            )
            return httpx.Response(
                200, json={"commitUrl": "https://huggingface.co/user/model/commit/0", "commitOid": "0" * 40}
            )
        return httpx.Response(404, json={"error": f"{path} is not served by this test"})
