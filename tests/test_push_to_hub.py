"""`training/push_to_hub.py`: the push-ready folder, its generated card, and pushes to an in-process fake Hub."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml
from helpers.fake_hub import FakeHub
from huggingface_hub import EvalResult, ModelCard
from helpers.python_subprocess import run_python
from helpers.run_fixture import STAGES, write_png, write_results, write_run
from helpers.tiny_configs import tiny_config
from transformers import (
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
)

from modeling_svitt import SViTTForPreTraining
from modeling_svitt.remote_code import copy_model_sources
from training import push_to_hub
from training.push_to_hub import CheckpointError, prepare_push_folder

REPO = "someone/svitt-tiny"
FAKE_TOKEN = "hf_SViTTfakeTOKEN_never_leak_7d3c9e"
TASK_CLASSES = {
    AutoModel: "SViTTModel",
    AutoModelForPreTraining: "SViTTForPreTraining",
    AutoModelForVisualQuestionAnswering: "SViTTForVideoQuestionAnswering",
    AutoModelForMultipleChoice: "SViTTForMultipleChoice",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("run") / "svitt-ego")
    write_results(run / "results.json", model=str(run))
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _front_matter(card_text: str) -> dict:
    return yaml.safe_load(card_text.split("---\n")[1])


def test_local_mode_writes_everything_the_repo_holds(run_dir, tmp_path):
    extra = write_results(tmp_path / "eval" / "results.json", model="elsewhere")
    push_to_hub.main([str(run_dir), REPO, "--stages", "--local-dir", str(tmp_path / "ready"), "--results", str(extra)])
    files = _files(tmp_path / "ready")
    package_sources = {path.name: path.read_bytes() for path in copy_model_sources(tmp_path / "sources")}
    for prefix in ("", "stage-1-2f/", "stage-2-4f/"):
        source = run_dir / (prefix or ".")
        for name in (
            "model.safetensors",
            "config.json",
            "processor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ):
            assert files[prefix + name] == (source / name).read_bytes(), prefix + name
        assert {name: files[prefix + name] for name in package_sources} == package_sources
    assert json.loads(files["results.json"]) == {**json.loads((run_dir / "results.json").read_text()), "model": "."}
    for name in (
        "summary.json",
        "metrics.jsonl",
        "curriculum.png",
        "token_selection/stage-1-2f.png",
        "token_selection/stage-2-4f.png",
    ):
        assert files[name] == (run_dir / name).read_bytes(), name
    assert files["results-1.json"] == extra.read_bytes()
    unexpected = {name for name in files if name.endswith((".pt", ".bin", ".pkl"))}
    assert not unexpected

    card = ModelCard.load(tmp_path / "ready" / "README.md")
    for key, value in _front_matter(files["README.md"].decode()).items():
        assert card.data.to_dict()[key] == value, key
    summary = json.loads((run_dir / "summary.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    expected = summary["model_index"] + results["model_index"]  # the extra results.json repeats the run's entry
    assert [result.__dict__ for result in card.data.eval_results] == [
        EvalResult(**entry).__dict__ for entry in expected
    ]


def test_only_the_runs_pictures_and_no_local_paths_are_uploaded(tmp_path):
    run = write_run(tmp_path / "runs" / "svitt")
    data = tmp_path / "data" / "msrvtt"
    results = json.loads(write_results(run / "results.json", model=str(run)).read_text())
    results["dataset"].update(annotations=[str(data / "test.json")], media_root=str(data / "videos"))
    (run / "results.json").write_text(json.dumps(results))
    recipe = {"name": "ret-msrvtt", "model": {"checkpoint": str(tmp_path / "models" / "svitt")},
              "stages": [{"data": {"annotations": "{synthetic}/ret_train.json", "media_root": str(data / "videos")}}]}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    write_png(run / "holiday" / "beach.png")  # the user's, not the run's
    write_png(run / "stage-1-2f" / "notes.png")
    prepare_push_folder(run, tmp_path / "ready", REPO, stages=True)
    files = _files(tmp_path / "ready")
    assert {name for name in files if name.endswith(".png")} == {
        "curriculum.png", "token_selection/stage-1-2f.png", "token_selection/stage-2-4f.png"
    }
    for name in ("results.json", "recipe.yaml", "README.md", "summary.json"):
        assert str(tmp_path) not in files[name].decode(), name
    uploaded = json.loads(files["results.json"])
    assert uploaded["model"] == "." and uploaded["dataset"]["annotations"] == ["test.json"]
    assert uploaded["dataset"]["media_root"] == "videos" and uploaded["metrics"] == results["metrics"]
    assert yaml.safe_load(files["recipe.yaml"]) == {
        "name": "ret-msrvtt", "model": {"checkpoint": "models/svitt"},
        "stages": [{"data": {"annotations": "{synthetic}/ret_train.json", "media_root": "data/msrvtt/videos"}}],
    }


def test_card_shows_the_recipe_stages_measured_numbers_and_pictures(run_dir, tmp_path):
    prepare_push_folder(run_dir, tmp_path / "ready", REPO)
    text = (tmp_path / "ready" / "README.md").read_text()
    assert "`synthetic` recipe" in text and "16 test videos, so chance R@1 is 6.2%" in text
    for frames, keep, metrics in STAGES:
        row = next(
            line for line in text.splitlines() if line.startswith("| stage-") and f"| {frames} | {keep} |" in line
        )
        for value in metrics.values():
            assert f"{100 * value:.1f}%" in row
    for picture in ("curriculum.png", "token_selection/stage-1-2f.png", "token_selection/stage-2-4f.png"):
        assert f"]({picture})" in text
    assert "| R@1 (text-to-video) | 31.25 |" in text and "| R@1 (text-to-video, 2 clips) | 37.5 |" in text
    assert "2 clip(s) of 4 frames (lse over clips)" in text
    assert "Reported by the authors" not in text  # the synthetic recipe has no published numbers
    assert 'from_pretrained("someone/svitt-tiny", trust_remote_code=True)' in text


def test_a_paper_recipe_card_adds_reported_numbers_outside_the_model_index(tmp_path):
    run = write_run(tmp_path / "run", recipe="svitt-ego", contrastive_loss="egonce")
    prepare_push_folder(run, tmp_path / "ready", REPO)
    text = (tmp_path / "ready" / "README.md").read_text()
    assert "### Reported by the authors (not reproduced here)" in text and "| 92.9 |" in text
    card = ModelCard.load(tmp_path / "ready" / "README.md")
    assert sorted(result.metric_value for result in card.data.eval_results) == [31.25, 68.75]  # measured only


@pytest.mark.parametrize("written_by", ["training", "push_to_hub local mode"])
def test_folders_load_by_name(written_by, run_dir, tmp_path, monkeypatch):
    if written_by == "training":
        monkeypatch.chdir(run_dir.parent)  # the run folder is named svitt-ego
    else:
        prepare_push_folder(run_dir, tmp_path / "svitt-ego", REPO)
        monkeypatch.chdir(tmp_path)
    for auto_class, class_name in TASK_CLASSES.items():
        assert type(auto_class.from_pretrained("svitt-ego")).__name__ == class_name
    processor = AutoProcessor.from_pretrained("svitt-ego")
    model = AutoModel.from_pretrained("svitt-ego").eval()
    inputs = processor(text=["a red square moves left"], videos=[torch.zeros(4, 3, 40, 40, dtype=torch.uint8)])
    with torch.no_grad():
        assert model(**inputs).logits_per_video.shape == (1, 1)


def test_bad_checkpoints_are_named(run_dir, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="is not a folder"):
        prepare_push_folder(tmp_path / "missing", tmp_path / "out", REPO)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        prepare_push_folder(tmp_path / "empty", tmp_path / "out", REPO)
    bare = tmp_path / "bare"
    SViTTForPreTraining(tiny_config()).save_pretrained(bare)
    with pytest.raises(CheckpointError, match="no processor"):
        prepare_push_folder(bare, tmp_path / "out", REPO)
    (bare / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        prepare_push_folder(bare, tmp_path / "out", REPO)
    (bare / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert' model, not an SViTT"):
        prepare_push_folder(bare, tmp_path / "out", REPO)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("work")
    with pytest.raises(CheckpointError, match="not empty"):
        prepare_push_folder(run_dir, tmp_path / "busy", REPO)
    broken = write_results(tmp_path / "broken.json", model="x")
    record = json.loads(broken.read_text())
    record["model_index"][0]["metric"] = 1.0
    broken.write_text(json.dumps(record))
    with pytest.raises(
        CheckpointError, match=r"broken.json is not a set of huggingface_hub.EvalResult fields \(unknown \['metric'\]"
    ):
        prepare_push_folder(run_dir, tmp_path / "out", REPO, results_files=[broken])
    single = tmp_path / "single"
    prepare_push_folder(run_dir, single, REPO)  # a push-ready folder is itself a checkpoint folder, without stages
    with pytest.raises(CheckpointError, match="summary.json names the stage folder stage-1-2f, but .* is missing"):
        prepare_push_folder(single, tmp_path / "out2", REPO, stages=True)
    (single / "summary.json").unlink()
    with pytest.raises(CheckpointError, match="no curriculum stage folders"):
        prepare_push_folder(single, tmp_path / "out3", REPO, stages=True)
    with pytest.raises(CheckpointError, match="cannot take --revision"):
        push_to_hub.push_run_to_hub(run_dir, REPO, create_pr=True, revision="dev")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(CheckpointError, match="No Hugging Face token found"):
        push_to_hub.push_run_to_hub(run_dir, REPO)


PUSH_SCRIPT = """
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[3])
    from helpers.tiny_configs import tiny_config
    from modeling_svitt import SViTTForPreTraining
    from training.push_to_hub import main, push_run_to_hub  # the training scripts install the checkpoint-name hint
    run_dir, results = sys.argv[1], sys.argv[2]
    main([run_dir, "someone/svitt-tiny", "--stages", "--private", "--results", results])
    commit = push_run_to_hub(run_dir, "someone/svitt-tiny", create_pr=True, commit_message="Proposal")
    print("PR", commit.pr_url)
    push_run_to_hub(run_dir, "someone/svitt-tiny", revision="dev")
    torch.manual_seed(0)
    SViTTForPreTraining(tiny_config()).save_pretrained(Path(sys.argv[4]), push_to_hub=True, repo_id="someone/direct")
    from transformers import AutoModel
    try:
        AutoModel.from_pretrained("someone/svitt-never-pushed")
    except OSError as error:
        print("missing repo:", repr(str(error)))
    print("done")
"""
LOAD_SCRIPT = """
    import time, torch
    from transformers import (AutoModel, AutoModelForMultipleChoice, AutoModelForPreTraining,
                              AutoModelForVisualQuestionAnswering, AutoProcessor)
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    for auto in (AutoModel, AutoModelForPreTraining, AutoModelForVisualQuestionAnswering, AutoModelForMultipleChoice):
        print(auto.__name__, type(auto.from_pretrained("someone/svitt-tiny", trust_remote_code=True)).__name__)
    retrieval = get_class_from_dynamic_module("modeling_heads.SViTTForVideoTextRetrieval", "someone/svitt-tiny")
    print("retrieval", type(retrieval.from_pretrained("someone/svitt-tiny")).__name__)
    processor = AutoProcessor.from_pretrained("someone/svitt-tiny", trust_remote_code=True)
    model = AutoModel.from_pretrained("someone/svitt-tiny", trust_remote_code=True).eval()
    inputs = processor(text=["a red square moves left"], videos=[torch.zeros(4, 3, 40, 40, dtype=torch.uint8)])
    with torch.no_grad():
        print("logits", tuple(model(**inputs).logits_per_video.shape))
    stage = AutoModel.from_pretrained("someone/svitt-tiny", subfolder="stage-1-2f", trust_remote_code=True)
    print("stage frames", stage.config.vision_config.num_frames)
"""
HUB_DOWN_SCRIPT = """
    import time
    import modeling_svitt
    from svitt_tools.checkpoint_names import install_checkpoint_name_hint
    install_checkpoint_name_hint()
    from transformers import AutoModel, AutoModelForMultipleChoice, AutoProcessor
    start = time.monotonic()
    model = AutoModelForMultipleChoice.from_pretrained("someone/svitt-tiny")
    print("cached", type(model).__name__, round(time.monotonic() - start, 2))
    for name in ("svitt-ego", "someone/svitt-never-pushed"):
        for load in (AutoModel.from_pretrained, AutoModelForMultipleChoice.from_pretrained,
                     AutoProcessor.from_pretrained, modeling_svitt.SViTTProcessor.from_pretrained):
            start = time.monotonic()
            try:
                load(name)
                print("LOADED", name)
            except OSError as error:
                print("failed", name, round(time.monotonic() - start, 2), repr(str(error)))
"""


@pytest.fixture(scope="module")
def hub_session(run_dir, tmp_path_factory):
    """Push the run (CLI, pull request, branch, `save_pretrained(push_to_hub=True)`), load it back by repo id without
    the package, then stop the Hub and load it again from the cache, with the package."""
    root = tmp_path_factory.mktemp("hub-session")
    extra_results = write_results(root / "eval" / "results.json", model="elsewhere")
    tests_dir = str(Path(__file__).parent)
    logs = {}
    with FakeHub() as hub:
        env = dict(
            HF_ENDPOINT=hub.url,
            HF_TOKEN=FAKE_TOKEN,
            HF_HUB_OFFLINE="0",
            HF_HOME=str(root / "hf-home-push"),
            HF_HUB_VERBOSITY="debug",
            TRANSFORMERS_VERBOSITY="debug",
            TMPDIR=str(root / "tmp"),
        )
        (root / "tmp").mkdir()
        logs["push"] = run_python(
            PUSH_SCRIPT, str(run_dir), str(extra_results), tests_dir, str(root / "direct"), env=env, cwd=root
        )
        main_after_first_push = dict(hub.files(REPO)) if REPO in hub.repos else {}
        load_env = {**env, "HF_HOME": str(root / "hf-home-load")}
        load_env.pop("HF_TOKEN")  # a public reader
        logs["load"] = run_python(LOAD_SCRIPT, env=load_env, cwd=root, with_package=False)
    with socket.socket() as probe:  # the Hub's port is closed now
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    logs["down"] = run_python(HUB_DOWN_SCRIPT, env={**load_env, "HF_ENDPOINT": dead}, cwd=root)
    prepare_push_folder(run_dir, root / "expected", REPO, stages=True, results_files=[extra_results])
    return dict(hub=hub, logs=logs, root=root, main_after_first_push=main_after_first_push)


def _check(result) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_push_arrives_byte_for_byte(hub_session):
    _check(hub_session["logs"]["push"])
    expected = _files(hub_session["root"] / "expected")
    arrived = hub_session["main_after_first_push"]
    assert arrived.keys() == expected.keys()
    assert [name for name in expected if arrived[name] != expected[name]] == []
    assert hub_session["hub"].repos[REPO].private


def test_pull_request_and_branch_pushes(hub_session):
    output = _check(hub_session["logs"]["push"])
    repo = hub_session["hub"].repos[REPO]
    assert f"PR {hub_session['hub'].url}/{REPO}/discussions/1" in output
    expected = _files(hub_session["root"] / "expected")
    without_stages = {name for name in expected if not name.startswith("stage-") and not name.startswith("results-")}
    for branch in ("refs/pr/1", "dev"):
        assert without_stages <= repo.branches[branch].keys()
        assert repo.branches[branch]["model.safetensors"] == expected["model.safetensors"]
    assert repo.branches["main"] == hub_session["main_after_first_push"]  # the PR and the branch left main alone


def test_a_repo_the_hub_does_not_have_says_how_to_get_a_checkpoint(hub_session):
    line = next(line for line in _check(hub_session["logs"]["push"]).splitlines() if line.startswith("missing repo:"))
    assert "'someone/svitt-never-pushed' is not a local folder, and it is not a model repository on" in line
    assert "--recipe svitt-ego --output-dir svitt-ego" in line


def test_save_pretrained_push_uploads_the_model_source(hub_session):
    _check(hub_session["logs"]["push"])
    arrived = hub_session["hub"].files("someone/direct")
    sources = {path.name: path.read_bytes() for path in copy_model_sources(hub_session["root"] / "sources")}
    assert {name: arrived.get(name) for name in sources} == sources
    assert {"config.json", "model.safetensors", "README.md"} <= arrived.keys()


def test_the_token_is_used_but_never_printed_logged_or_written(hub_session):
    push = hub_session["logs"]["push"]
    _check(push)
    hub = hub_session["hub"]
    commits = [headers for method, path, headers in hub.requests if "/commit/" in path]
    assert commits and all(headers.get("authorization") == f"Bearer {FAKE_TOKEN}" for headers in commits)
    assert "(authenticated: True)" in push.stderr  # huggingface_hub logged every request, at debug level
    for name, result in hub_session["logs"].items():
        assert FAKE_TOKEN not in result.stdout + result.stderr, name
    token = FAKE_TOKEN.encode()
    written = [path for path in hub_session["root"].rglob("*") if path.is_file() and token in path.read_bytes()]
    assert written == []
    for repo in hub.repos.values():
        for files in repo.branches.values():
            assert not [name for name, data in files.items() if token in data]


def test_the_repo_loads_by_id_without_the_package(hub_session):
    lines = _check(hub_session["logs"]["load"]).splitlines()
    for auto_class, class_name in TASK_CLASSES.items():
        assert f"{auto_class.__name__} {class_name}" in lines
    assert "retrieval SViTTForVideoTextRetrieval" in lines and "logits (1, 1)" in lines and "stage frames 2" in lines


def test_when_the_hub_is_down_cached_repos_load_and_unknown_names_fail_fast(hub_session):
    lines = _check(hub_session["logs"]["down"]).splitlines()
    cached = next(line for line in lines if line.startswith("cached")).split()
    assert cached[1] == "SViTTForMultipleChoice" and float(cached[2]) < 10
    failures = [line for line in lines if line.startswith("failed")]
    assert len(failures) == 8 and not [line for line in lines if line.startswith("LOADED")]
    for line in failures:
        seconds = float(line.split()[2])
        assert seconds < 10, line  # huggingface_hub's retries alone take 23 s
        assert "--recipe svitt-ego --output-dir svitt-ego" in line and "convert_original_svitt" in line, line
        assert "could not be reached" in line and "holds nothing for it" in line, line
    assert "Retrying" not in hub_session["logs"]["down"].stderr


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("t2v_r1", 0.5, "50.0%"),  # fractions as percentages
        ("t2v_r1", 0.004, "0.4%"),
        ("qa_accuracy", 1, "100.0%"),
        ("t2v_median_rank", 1.0, "1.0"),  # ranks as numbers, also at 1
        ("v2t_mean_rank", 0.5, "0.5"),
        ("t2v_MedR", 1, "1.0"),  # the raw metrics' spelling of ranks
        ("t2v_MnR", 3.25, "3.2"),
        ("itm_reranked_r1", 0.25, "25.0%"),  # "rank" inside another word is not a rank
        ("num_test_videos", 200, "200"),  # counts as integers
        ("t2v_R@1", 45.3, "45.3"),  # a score already in percent stays a number
        ("qa_accuracy", "-", "-"),
        ("qa_accuracy", True, "True"),
    ],
)
def test_cards_and_reports_print_a_metric_alike(name, value, shown):
    """The card's stage table (push_to_hub) and the evaluation / sweep tables (report) share one rule."""
    from svitt_tools.model_card import format_metric
    from training import report

    assert push_to_hub.format_metric is report.format_metric is format_metric
    assert format_metric(name, value) == shown
