"""The layout's promises: a scenario is one module plus one registry entry, no import runs in a circle, listing the
scenarios does not import torch, and the shared data chores apply to every scenario."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import textwrap
import wave
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fmhub"

THROWAWAY = '''
"""A scenario someone adds: defect inspection, in one module with a stub tab."""

from fmhub.scenarios.base import Scenario


class DefectInspection(Scenario):
    name = "defect-inspection"
    title = "Defect inspection"
    emoji = "🔩"
    description = "Scratches and dents on metal parts"
    tab = "throwaway_scenario:build_tab"
    modality = "image"
    pipeline_tag = "image-classification"
    library_name = "timm"
    default_backbone = "resnet18"


def build_tab(slot):
    import gradio as gr

    gr.Markdown(f"stub tab for {slot.scenario}", elem_id="defect-stub")
'''


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    from fmhub import registry

    (tmp_path / "throwaway_scenario.py").write_text(THROWAWAY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import throwaway_scenario

    registry.register(throwaway_scenario.DefectInspection)
    yield throwaway_scenario.DefectInspection
    registry.unregister("defect-inspection")
    sys.modules.pop("throwaway_scenario", None)


def test_a_scenario_registered_from_one_module_reaches_the_cli_the_app_and_the_spaces(throwaway, tmp_path):
    from fmhub.cli import build_parser
    from fmhub.spaces import write_space_folder
    from fmhub.ui.app import AppConfig, build_app

    help_text = io.StringIO()
    with redirect_stdout(help_text), pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    choices = help_text.getvalue().split("--scenario", 1)[1].split("}", 1)[0]
    assert "defect-inspection" in choices and "customer-service" in choices
    assert build_parser().parse_args(["predict", "--scenario", "defect-inspection", "--input-file", "x",
                                      "--output", "y"]).scenario == "defect-inspection"

    demo, slots = build_app(AppConfig(port=None, bootstrap=False))
    assert "defect-inspection" in slots
    config = demo.get_config_file()
    tabs = {c["props"].get("id"): c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"}
    assert tabs["defect-inspection"] == "Defect inspection"
    assert any(c["props"].get("elem_id") == "defect-stub" for c in config["components"])

    folder = write_space_folder("defect-inspection", tmp_path / "space", bundle_package=False)
    readme = (folder / "README.md").read_text()
    assert "title: Defect inspection" in readme and "short_description: Scratches and dents on metal parts" in readme
    assert 'build_space_demo("defect-inspection"' in (folder / "app.py").read_text()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """fmhub module -> the fmhub modules it imports: at module level and inside functions, the parent packages each
    import runs first (all but the root package, whose __init__ imports nothing until a public name is used), and the
    imports made from names in data: the registry's BUILTIN, the scenarios' tab modules (the app imports them), the
    root package's lazy public names."""
    from fmhub import _PUBLIC
    from fmhub.registry import BUILTIN, list_scenarios, scenario_class

    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "fmhub"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fmhub":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if _is_module(sub) else node.module)
        graph[name] = targets
    graph["fmhub.registry"] |= {entry.split(":")[0] for entry in BUILTIN}
    graph["fmhub.ui.app"] |= {scenario_class(n).tab.split(":")[0] for n in list_scenarios()}
    graph["fmhub"] |= set(_PUBLIC.values())
    for name, targets in graph.items():
        parents = set()
        for target in targets:
            parts = target.split(".")
            parents |= {".".join(parts[:i]) for i in range(2, len(parts))}
        targets |= parents
        targets.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_counting_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 40 and "fmhub.scenarios.voice_command" in graph["fmhub.registry"]
    assert "fmhub.runner" in graph["fmhub.defaults"]  # imports inside functions count
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_listing_scenarios_and_the_cli_help_do_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from fmhub.cli import build_parser
        from fmhub.registry import list_scenarios
        build_parser()
        print(list_scenarios(), sorted(m for m in ("torch", "transformers", "datasets", "gradio") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "['customer-service', 'medical-image', 'voice-command'] []"


def test_scenario_facts_live_in_their_class():
    from fmhub.registry import list_scenarios, scenario_class

    for name in list_scenarios():
        cls = scenario_class(name)
        assert cls.title and cls.emoji and cls.description and cls.license and ":" in cls.tab, name


# -- the shared data chores ------------------------------------------------------------------------------------------
PER_CLASS = 30  # rows per class in the train-only data; 70/15/15 leaves 4-5 per class in validation and test
CAP = 3


def _text_data(folder: Path) -> str:
    path = folder / "rows.jsonl"
    topics = {"billing": "my invoice number {i} is wrong", "shipping": "parcel {i} has not arrived yet"}
    path.write_text("".join(json.dumps({"text": t.format(i=i), "label": label}) + "\n"
                            for label, t in topics.items() for i in range(PER_CLASS)))
    return str(path)


def _class_folders(folder: Path, make_file) -> str:
    """An imagefolder/audiofolder layout: two label subfolders of PER_CLASS files written by `make_file`."""
    rng = np.random.default_rng(0)
    for index, label in enumerate(("first", "second")):
        (folder / label).mkdir()
        for i in range(PER_CLASS):
            make_file(folder / label / str(i), index, rng)
    return str(folder)


def _image_file(stem: Path, index: int, rng) -> None:
    from PIL import Image

    pixels = np.clip(rng.normal(60 + 130 * index, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(stem.with_suffix(".png"))


def _audio_file(stem: Path, index: int, rng) -> None:
    t = np.arange(16000) / 16000
    samples = 0.3 * np.sin(2 * np.pi * (150.0 + 290.0 * index) * t) + 0.01 * rng.normal(size=t.size)
    with wave.open(str(stem.with_suffix(".wav")), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(16000)
        fh.writeframes((samples * 32767).astype("<i2").tobytes())


DATA = {"text": _text_data, "image": lambda folder: _class_folders(folder, _image_file),
        "audio": lambda folder: _class_folders(folder, _audio_file)}


def _registered() -> list[str]:
    from fmhub.registry import list_scenarios

    return list_scenarios()


@pytest.mark.parametrize("name", _registered())
def test_max_samples_per_class_caps_every_class_of_every_split(name, tmp_path):
    from fmhub.config import TrainConfig
    from fmhub.registry import get_scenario

    scenario = get_scenario(name)
    (tmp_path / "data").mkdir()
    data = DATA[scenario.modality](tmp_path / "data")
    full = scenario.load_splits(TrainConfig(scenario=name, data=data))
    capped = scenario.load_splits(TrainConfig(scenario=name, data=data, max_samples_per_class=CAP))
    assert set(full) == set(capped) == {"train", "validation", "test"}
    for split in ("train", "validation", "test"):
        before = np.bincount(np.asarray(full[split]["label"]), minlength=2)
        after = np.bincount(np.asarray(capped[split]["label"]), minlength=2)
        assert (before > CAP).all(), (split, before)  # so the cap has something to do
        assert after.tolist() == [CAP, CAP], (split, after)
    assert sum(len(full[s]) for s in full) == 2 * PER_CLASS  # splits cut from train, nothing lost or doubled
