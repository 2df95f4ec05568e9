"""Which member folders a study may reuse or replace: only those it created, with arguments of the same meaning; any
other folder is refused before any work, naming it (#23.2, #23.3). A stand-in recipe writes a finished run."""

import json
import sys

import pytest

from hf_maxsup import cli
from hf_maxsup.report.runs import MEMBER_FILE
from hf_maxsup.studies.members import (
    Member,
    canonical_args,
    check_member_folder,
    check_same_settings,
    plan_members,
    train_members,
)

# A recipe that "trains" by writing what a finished run holds, and notes each run in a log beside it.
FAKE_RECIPE = """
import json, os, sys
out = sys.argv[sys.argv.index("--output_dir") + 1]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "model.safetensors"), "w").write("weights")
open(os.path.join(out, "eval_results.json"), "w").write("{}")
with open(os.path.join(os.path.dirname(__file__), "trained.log"), "a") as log:
    log.write(out + "\\n")
"""
ARGS = ["--num_train_epochs", "2", "--learning_rate", "2e-3", "--augment", "false"]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.py"
    path.write_text(FAKE_RECIPE)
    return path


def trained(recipe):
    log = recipe.parent / "trained.log"
    return log.read_text().split() if log.exists() else []


def finished_user_run(folder, with_results=True):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text("the user's weights")
    if with_results:
        (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.9}))


def test_arguments_compare_by_meaning_not_spelling():
    same = canonical_args(ARGS)
    assert canonical_args(["--learning_rate=2e-3", "--augment", "false", "--num_train_epochs", "2"]) == same
    assert canonical_args(["--num_train_epochs", "1", *ARGS]) == same  # the parser keeps the last
    assert canonical_args(["--num_train_epochs", "3", *ARGS[2:]]) != same
    assert canonical_args(["--flag", "--x=a=b"]) == {"--flag": (), "--x": ("a=b",)}


@pytest.mark.parametrize("with_results", [True, False])
def test_a_run_compare_did_not_create_is_refused_before_any_work(tmp_path, recipe, with_results):
    runs = tmp_path / "runs"
    # A user's own run where the second member goes: finished (it used to be "finished earlier, skipped" and enter
    # the report), or unfinished (it used to be retrained with --overwrite_output_dir).
    finished_user_run(runs / "ls-seed42", with_results)
    members = plan_members(str(runs), ["ce", "ls", "maxsup"], [42])
    with pytest.raises(ValueError, match=r"ls-seed42 was not created by hf-maxsup \(it has no hf_maxsup_compare"):
        train_members(members, str(recipe), ARGS, python=sys.executable, log=lambda message: None)
    assert trained(recipe) == [] and not (runs / "ce-seed42").exists()  # nothing trained, nothing written
    assert (runs / "ls-seed42" / "model.safetensors").read_text() == "the user's weights"
    assert not (runs / "ls-seed42" / MEMBER_FILE).exists()


def test_compare_refuses_a_users_run_naming_it(tmp_path, recipe, capsys):
    runs = tmp_path / "runs"
    finished_user_run(runs / "maxsup-seed42")
    argv = ["compare", "--recipe", str(recipe), "--output_dir", str(tmp_path / "report"), "--runs_dir", str(runs)]
    assert cli.main([*argv, *ARGS]) == 1
    assert f"{runs / 'maxsup-seed42'} was not created by hf-maxsup" in capsys.readouterr().err
    assert trained(recipe) == [] and not (tmp_path / "report").exists()


def test_other_arguments_are_refused_before_any_member_is_trained(tmp_path, recipe):
    members = plan_members(str(tmp_path), ["ce", "ls"], [0])
    check_same_settings(members[1], str(recipe), ["--num_train_epochs", "1", *ARGS[2:]])  # ls-seed0: 1 epoch
    with pytest.raises(
        ValueError, match=r"ls-seed0 was created with other arguments \(--num_train_epochs: 1 recorded, 2 now\)"
    ):
        train_members(members, str(recipe), ARGS, python=sys.executable, log=lambda message: None)
    assert trained(recipe) == []  # ce-seed0, first in line, was not trained either


def test_the_same_arguments_in_another_spelling_reuse_the_members(tmp_path, recipe):
    members = plan_members(str(tmp_path), ["ce", "ls"], [0])
    train_members(members, str(recipe), ARGS, python=sys.executable, log=lambda message: None)
    assert len(trained(recipe)) == 2
    respelled = ["--augment", "false", "--learning_rate=2e-3", "--num_train_epochs=2"]
    lines = []
    train_members(members, str(recipe), respelled, python=sys.executable, log=lines.append)
    assert len(trained(recipe)) == 2 and sum("finished earlier, skipped" in line for line in lines) == 2
    # The record keeps the arguments as first given.
    assert json.loads((tmp_path / "ce-seed0" / MEMBER_FILE).read_text())["args"] == ARGS


def test_what_differs_is_named(tmp_path, recipe):
    member = Member("ce", 0, str(tmp_path / "ce-seed0"))
    check_same_settings(member, str(recipe), ARGS)
    check_member_folder(member, str(recipe), ARGS)
    with pytest.raises(ValueError) as refused:
        check_member_folder(member, str(recipe), ["--learning_rate", "1e-3", "--seed_extra", *ARGS[:2]])
    message = str(refused.value)
    assert "--learning_rate: 2e-3 recorded, 1e-3 now" in message and "--augment: false recorded, absent now" in message
    assert "--seed_extra: absent recorded, given now" in message and "delete that folder only if" in message
    with pytest.raises(ValueError, match="loss: ce recorded, ls now"):
        check_member_folder(Member("ls", 0, member.output_dir), str(recipe), ARGS)
    # An empty folder (made by the user beforehand) is compare's to use; a broken record is named.
    empty = Member("ls", 0, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    check_member_folder(empty, str(recipe), ARGS)
    (tmp_path / "empty" / MEMBER_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable record of hf-maxsup compare"):
        check_member_folder(empty, str(recipe), ARGS)


def test_distill_checks_every_students_folder_before_training_any(tmp_path, recipe, capsys):
    teachers = []
    for loss in ("ce", "ls"):
        (tmp_path / loss).mkdir()
        (tmp_path / loss / "config.json").write_text("{}")
        teachers.append(str(tmp_path / loss))
    runs = tmp_path / "students"
    finished_user_run(runs / "ls-seed1")  # the last student of the second teacher
    argv = ["distill", "--teachers", *teachers, "--seeds", "0", "1", "--recipe", str(recipe)]
    assert cli.main([*argv, "--output_dir", str(tmp_path / "report"), "--runs_dir", str(runs)]) == 1
    assert f"{runs / 'ls-seed1'} was not created by hf-maxsup" in capsys.readouterr().err
    assert trained(recipe) == [] and not (runs / "ce-seed0").exists()
