"""The recipes: every config loads through the schema; offline recipes find their data in the repository; the
data-preparation scripts of the online ones parse and agree with their configs; every recipe directory has a README.

A recipe is *online* when its directory holds a prepare.sh (it downloads its data, so it cannot run here), *offline*
otherwise (its data ships in data/). Paths in configs are relative to the repository root, where recipes are run.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

from seqtool.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
CONFIGS = sorted(RECIPES.rglob("*.yaml"))
SCRIPTS = sorted(RECIPES.rglob("prepare.sh"))
DIRS = sorted(path for path in RECIPES.iterdir() if path.is_dir())


def is_online(path: Path) -> bool:
    """A config or recipe directory whose data is downloaded by a prepare.sh beside it."""
    folder = path if path.is_dir() else path.parent
    return (folder / "prepare.sh").is_file()


OFFLINE = [path for path in CONFIGS if not is_online(path)]
ONLINE = [path for path in CONFIGS if is_online(path)]


def name(path: Path) -> str:
    return str(path.relative_to(RECIPES))


def data_paths(cfg: Config) -> list[str]:
    """Every file a config names (empty = not used)."""
    files = [path for part in [*cfg.data.corpora(), *cfg.data.dev_sets()] for path in (part.src, part.tgt)]
    files += [cfg.tokenizer.model, cfg.tokenizer.src_model, cfg.tokenizer.tgt_model]
    return [file for file in files if file]


@functools.cache
def line_count(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def test_there_are_recipes() -> None:
    assert len(OFFLINE) >= 5 and len(ONLINE) >= 2 and SCRIPTS


@pytest.mark.parametrize("recipe", CONFIGS, ids=name)
def test_every_recipe_loads(recipe: Path) -> None:
    cfg = load_config(recipe)
    assert cfg.data.corpora() and all(c.src and c.tgt for c in cfg.data.corpora())
    assert not any(Path(file).is_absolute() for file in data_paths(cfg)), "paths must be relative to the repo root"


@pytest.mark.parametrize("recipe", OFFLINE, ids=name)
def test_offline_recipe_data_is_in_the_repository(recipe: Path) -> None:
    cfg = load_config(recipe)
    missing = [file for file in data_paths(cfg) if not (REPO / file).is_file()]
    assert not missing, f"{name(recipe)} names files that are not in the repository: {missing}"
    pairs = [(REPO / dev.src, REPO / dev.tgt) for dev in cfg.data.dev_sets()]
    for corpus in cfg.data.corpora():
        src, tgt = REPO / corpus.src, REPO / corpus.tgt
        pairs.append((src, tgt))
        # the test split beside the training files, which the recipe's README translates and scores
        if src.name.startswith("train.") and tgt.name.startswith("train."):
            test_src, test_tgt = src.with_name("test" + src.suffix), tgt.with_name("test" + tgt.suffix)
            assert test_src.is_file() and test_tgt.is_file(), f"no test split beside {corpus.src}"
            pairs.append((test_src, test_tgt))
    for src_file, tgt_file in pairs:
        assert line_count(src_file) == line_count(tgt_file) > 0, (src_file, tgt_file)


@pytest.mark.parametrize("recipe", ONLINE, ids=name)
def test_online_recipe_reads_what_its_prepare_script_writes(recipe: Path) -> None:
    """All data of an online recipe lives in one directory, and its README prepares exactly that directory."""
    cfg = load_config(recipe)
    folders = {str(Path(file).parent) for file in data_paths(cfg)}
    assert len(folders) == 1, f"{name(recipe)}: data spread over {sorted(folders)}"
    folder = folders.pop()
    readme = (recipe.parent / "README.md").read_text(encoding="utf-8")
    assert f"recipes/{recipe.parent.name}/prepare.sh {folder}" in readme
    assert cfg.tokenizer.model == f"{folder}/spm.model", "the recipe should use the tokenizer prepare.sh trains"


@pytest.mark.parametrize("script", SCRIPTS, ids=name)
def test_prepare_scripts_parse(script: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = script.read_text(encoding="utf-8")
    assert "set -euo pipefail" in text
    head = "\n".join(text.splitlines()[:10])
    assert "INTERNET" in head.upper(), "say at the top that the script needs internet access"


@pytest.mark.parametrize("folder", DIRS, ids=name)
def test_every_recipe_directory_has_a_readme(folder: Path) -> None:
    readme = folder / "README.md"
    assert readme.is_file(), f"{name(folder)} has no README.md"
    lines = readme.read_text(encoding="utf-8").splitlines()
    if is_online(folder):
        assert "internet" in "\n".join(lines[:5]).lower(), "say at the top that the recipe needs internet access"
    else:
        assert "## Result" in lines, f"{name(readme)} has no '## Result' section"


def test_the_recipes_index_names_every_recipe() -> None:
    """recipes/README.md lists every recipe directory and every top-level config, so none is left undocumented."""
    index = (RECIPES / "README.md").read_text(encoding="utf-8")
    for folder in DIRS:
        assert f"`{folder.name}/`" in index, f"recipes/README.md does not list {folder.name}/"
    for config in RECIPES.glob("*.yaml"):
        assert config.stem in index, f"recipes/README.md does not list {config.name}"


def test_prepare_lib_steps_and_cleaning(tmp_path: Path) -> None:
    """The prepare scripts' helpers: `clean` filters pairs, a finished step is skipped, a foreign file stops."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    (tmp_path / "in.en").write_text("Hello  world\n\nfine\na b c d e f g h\n", encoding="utf-8")
    (tmp_path / "in.de").write_text("Hallo\tWelt\nleer\ngut\nkurz\n", encoding="utf-8")
    script = f"""
set -euo pipefail
PYTHON=python3 WORK={tmp_path}/work
mkdir -p "$WORK"
source {RECIPES / "prepare-lib.sh"}
if step one {tmp_path}/out.en; then
    clean {tmp_path}/in.en {tmp_path}/in.de {tmp_path}/out.en {tmp_path}/out.de 5 3
    finish one
fi
step one {tmp_path}/out.en || echo skipped
touch {tmp_path}/foreign
step two {tmp_path}/foreign
"""
    result = subprocess.run([bash, "-c", script], capture_output=True, text=True, check=False)
    assert (tmp_path / "out.en").read_text(encoding="utf-8") == "Hello world\nfine\n"
    assert (tmp_path / "out.de").read_text(encoding="utf-8") == "Hallo Welt\ngut\n"
    assert "kept 2 of 4 pairs (dropped 2)" in result.stdout
    assert "== one" in result.stdout and "skipped" in result.stdout
    assert result.returncode == 1
    assert "foreign exists and was not written by this script" in result.stderr
