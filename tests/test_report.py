"""The report: SEED.md's tables beside ours, charts, observations; it renders in a real browser."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

import study_fakes
from cnnlab import runfolder, study
from cnnlab.cli import main
from cnnlab.document import FILES_FOLDER
from cnnlab.report import write_report
from cnnlab.store import Store


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-seed study (fake training, one diverged run) and its report."""
    folder = tmp_path_factory.mktemp("report")
    path = folder / "mini.toml"
    path.write_text(study_fakes.STUDY_TOML.replace("[0, 0.0001, 1]", "[0, 0.0001, 1, 100]"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runfolder, "save_run", study_fakes.fake_save_run)
        outcome = study.run_study(
            path,
            out=folder / "out",
            data=study_fakes.zeros_cifar(),
            fit=study_fakes.fake_fit,
            echo=lambda line: None,
        )
    assert write_report(outcome.study_dir)["html"] == folder / "out" / "report.html"
    return folder / "out"


def test_the_markdown_puts_the_reports_numbers_beside_ours(finished):
    markdown = (finished / "report.md").read_text()
    # n | train acc (report) | train acc (cnnlab) | test acc (report) | test acc (cnnlab) | ...
    assert "| 5,000 | 0.63 | 0.628 ± 0.003 (2) | 0.50 | 0.498 ± 0.003 (2) | 172.7 |" in markdown
    assert "| 10,000 | – | 0.653 ± 0.003 (2) | – |" in markdown
    assert "| 1 | 0.22 | 0.100 ± 0.000 (2) | 0.22 | 0.100 ± 0.000 (2) |" in markdown
    assert "| seed-maxpool | 0.658 ± 0.003 (2) |" in markdown


def test_observations_are_read_off_the_numbers(finished):
    markdown = (finished / "report.md").read_text()
    assert "From L1 weight=1 on, L1 collapses the model to the most-frequent-class" in markdown
    assert "the train−test gap shrinks from 0.130 to 0.105" in markdown
    assert "seed-maxpool has 2.65× the parameters" in markdown
    assert "**Sizes**: validation loss is lowest at epoch 2 of 4 at every grid point" in markdown


def test_diverged_runs_and_the_environment_are_listed(finished):
    markdown = (finished / "report.md").read_text()
    assert re.search(r"\| `\w{12}` \| diverged \| l1 \| loss not finite at epoch 2 \|", markdown)
    assert f"| data SHA-256 | `{'0' * 64}` |" in markdown
    assert "| data source | zeros |" in markdown
    assert "| CPU cores |" in markdown and "total fit time" in markdown


def test_every_figure_is_a_file_beside_the_markdown_and_embedded_in_the_html(finished):
    markdown = (finished / "report.md").read_text()
    html = (finished / "report.html").read_text()
    linked = re.findall(rf"\]\(({FILES_FOLDER}/[^)]+\.png)\)", markdown)
    assert len(linked) >= 9  # curves x3, size and L1 charts, pooling bars, histories x3, confusion
    for relative in linked:
        with Image.open(finished / relative) as image:
            image.verify()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(linked)
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in html and "https://" not in html  # nothing to fetch: self-contained


def test_the_report_command_rewrites_both_files(finished, capsys):
    (finished / "report.md").unlink()
    assert main(["report", str(finished)]) == 0
    assert capsys.readouterr().out.startswith(f"report: {finished / 'report.html'}")
    assert (finished / "report.md").is_file()


def test_the_report_of_a_folder_that_is_no_study_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a cnnlab study folder" in capsys.readouterr().err


def test_results_export_one_row_per_run(finished, capsys):
    assert main(["results", str(finished), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12
    assert {row["status"] for row in rows} == {"done", "diverged"}
    shared = [row for row in rows if row["experiments"] == "l1;pooling;sizes"]
    assert len(shared) == 2 and {row["seed"] for row in shared} == {"0", "1"}
    assert main(["results", str(finished), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)  # no NaN
    assert len(records) == 12 and len(records[0]["history"]) == 4
    assert main(["results", str(finished)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["id", "status", "experiments"] and len(table) == 13


def test_compare_shows_only_what_differs(finished, capsys):
    with Store.open(finished) as store:
        runs = {
            (r.config["arch"], r.config["train_size"], r.config["l1"], r.seed): r.id
            for r in store.runs()
        }
    strided, pooled = runs[("seed", 5000, 1e-4, 0)], runs[("seed-maxpool", 5000, 1e-4, 0)]
    assert main(["compare", "--study", str(finished), strided[:6], pooled]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [strided, pooled]
    differing = [line.split()[:2] for line in lines[1:3]]
    assert differing == [["config", "arch"], ["metric", "fit_seconds"]]
    assert not any(line.split()[:2] in (["config", "seed"], ["config", "epochs"]) for line in lines)
    folders = [str(finished / "runs" / run) for run in (strided, pooled)]
    assert main(["compare", *folders]) == 0
    assert "config arch" in capsys.readouterr().out


# --- a real browser ---------------------------------------------------------------------------

_PROBE = """<script>
addEventListener("load", () => {
  const broken = [...document.images].filter((i) => !(i.complete && i.naturalWidth > 0));
  document.body.setAttribute("data-images", document.images.length + ":" + broken.length);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("chromium is not installed")


def _render(page: Path, profile: Path) -> tuple[str, list[str]]:
    """Load `page` headless with an image probe; returns its probe result and console lines."""
    probed = profile.parent / f"probed-{page.name}"  # beside the profile, not the report
    probed.write_text(page.read_text().replace("</body>", f"{_PROBE}</body>"))
    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r'data-images="(\d+:\d+)"', done.stdout)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return (match.group(1) if match else "no result"), console


@pytest.mark.browser
def test_the_html_loads_in_headless_chromium_and_every_image_decodes(finished, tmp_path):
    images = len(re.findall(r"<img ", (finished / "report.html").read_text()))
    result, console = _render(finished / "report.html", tmp_path / "profile")
    assert (result, console) == (f"{images}:0", [])
    # The probe can fail: a truncated image and a script error are both caught.
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><body><img src="data:image/png;base64,iVBORw0KGgo=">'
        "<script>missing();</script></body></html>"
    )
    result, console = _render(broken, tmp_path / "profile")
    assert result == "1:1"
    assert len(console) == 1 and "Uncaught ReferenceError" in console[0]


def test_compare_finds_run_ids_in_the_studies_under_results(
    finished, tmp_path, monkeypatch, capsys
):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mini").symlink_to(finished)
    monkeypatch.chdir(tmp_path)
    with Store.open(finished) as store:
        first, second = (r.id for r in store.runs()[:2])
    assert main(["compare", first, second]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["config", "seed", "0", "1"]
    assert main(["compare", "ffffffff", first]) == 2
    assert "in no study under ./results" in capsys.readouterr().err
