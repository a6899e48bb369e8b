"""take_a_look.ipynb runs top to bottom on a small synthetic CK+ and shows what it promises."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import dataset


REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "take_a_look.ipynb"
FIGURES = 5  # AU counts, co-occurrence, landmarks, both crops, montage
TABLE_ROW = re.compile(r"^\| AU(\d+) \| (\d+) \|", re.MULTILINE)


def cells_tagged(nb, tag: str) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]


def outputs_of(cell, mime: str) -> list[str]:
    return [o["data"][mime] for o in cell.outputs if mime in o.get("data", {})]


@pytest.fixture(scope="module")
def executed(ck, tmp_path_factory):
    """The notebook, run in a fresh kernel on the `ck` tree from the repository root, as a user would."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CKPLUS_ROOT", str(ck.root))  # the kernel inherits this process's environment
        NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


def test_every_code_cell_runs_without_error(executed):
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]


def test_every_figure_is_drawn(executed):
    figure_cells = cells_tagged(executed, "figure")
    assert len(figure_cells) == FIGURES
    for cell in figure_cells:
        assert outputs_of(cell, "image/png"), f"no image from:\n{cell.source[:200]}"
    images = sum(len(outputs_of(c, "image/png")) for c in executed.cells if c.cell_type == "code")
    assert images >= FIGURES


def test_statistics_table_matches_label_counts(executed, ck):
    (cell,) = cells_tagged(executed, "label-counts")
    (table,) = outputs_of(cell, "text/markdown")
    shown = {int(au): int(n) for au, n in TABLE_ROW.findall(table)}
    records = dataset.index_ckplus(*ck.dirs, skip_bad=True)
    assert shown == dataset.label_counts(records)


def test_small_tree_falls_back_to_the_default_aus(executed):
    # 8 subjects code no AU more than 90 times: the notebook must say so and plot the 10 default AUs
    (cell,) = cells_tagged(executed, "selection")
    text = "".join(o.get("text", "") for o in cell.outputs)
    assert "more than 90 sequences: none" in text
    assert "the default AUs, " + " ".join(f"AU{au}" for au in dataset.DEFAULT_AUS) in text


def test_without_ckplus_root_it_reads_the_demo_tree(ck, tmp_path):
    # The demo's place in a private cache holds the small tree, so nothing is generated here.
    cache = tmp_path / "cache"
    demo = dataset.demo_root(str(cache / "au-recognition"))
    demo.parent.mkdir(parents=True)
    demo.symlink_to(ck.root, target_is_directory=True)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("CKPLUS_ROOT", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(cache))
        NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(REPO)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"CK+ root: {demo}" in text
    assert f"{len(dataset.index_ckplus(*ck.dirs, skip_bad=True))} FACS-coded sequences from 8 subjects" in text


def test_stored_notebook_is_small_and_private():
    """The committed outputs come from the synthetic tree: no home folders, a reasonable size."""
    assert NOTEBOOK.stat().st_size < 2_000_000
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        # everything but the base64 images, whose alphabet could spell a path by chance
        outputs = [{**o, "data": {k: v for k, v in o.get("data", {}).items() if not k.startswith("image/")}}
                   for o in cell.get("outputs", [])]
        text = cell.source + repr(outputs)
        assert not re.search(r"/(home|Users|root)/|[A-Za-z]:\\\\", text), text[:300]
    (cell,) = cells_tagged(nb, "label-counts")
    assert outputs_of(cell, "text/markdown"), "the stored notebook has no outputs: execute it (see its last cell)"
