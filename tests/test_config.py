"""The build config: YAML read and validated, flags over it, and every bad file one `error:` line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from iclora_data.config import ConfigError, load_config
from tests._images import image_set

YAML = """
compose:
  preset: film-storyboard
  fit: pad
  fill: "#102030"
caption:
  max_new_tokens: 200
workers: 3
until: compose
"""


def test_yaml_is_read_and_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    cfg = load_config(path)
    raw = yaml.safe_load(YAML)  # the oracle: what the file says
    assert cfg.compose.preset == raw["compose"]["preset"] and cfg.compose.fit == raw["compose"]["fit"]
    assert cfg.compose.fill == (0x10, 0x20, 0x30)
    assert cfg.caption.max_new_tokens == raw["caption"]["max_new_tokens"]
    assert cfg.workers == 3 and cfg.until == "compose"
    assert cfg.compose.quality == 95  # defaults fill what the file leaves out


def test_flags_override_the_file_and_unset_flags_do_not(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    cfg = load_config(path, {"compose.fit": "crop", "compose.preset": None, "workers": 5, "compose.layout": None})
    assert cfg.compose.fit == "crop" and cfg.workers == 5
    assert cfg.compose.preset == "film-storyboard"  # a flag not given leaves the file's value


@pytest.mark.parametrize(("text", "message"), [
    ("compose:\n  colour: red\n", "unknown setting compose.colour in "),
    ("nonsense: 1\n", "unknown setting nonsense in "),
    ("compose:\n  preset: film-storybord\n", "unknown preset 'film-storybord'; known presets: couple-profile"),
    ("compose:\n  layout: 4000x4000\n", "layout 4000x4000 is too large"),
    ("workers: lots\n", "bad setting workers in "),
    ("- a\n- b\n", "must hold a mapping of settings"),
    ("compose: [\n", "is not valid YAML"),
])
def test_bad_settings_are_one_error_naming_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_override_into_a_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("compose: 3\n")
    with pytest.raises(ConfigError, match="bad setting compose in .*must be a mapping"):
        load_config(path, {"compose.fit": "pad"})


def iclora(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iclora_data.cli", *args], capture_output=True, text=True,
                          timeout=300)


def assert_one_error_line(r: subprocess.CompletedProcess, starts: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {starts}"), r.stderr


@pytest.mark.parametrize("kind", ["latin1", "folder", "missing", "unknown-key"])
def test_bad_config_file_is_one_error_line_from_the_cli(tmp_path, kind):
    image_set(tmp_path / "src" / "a", [1, 2])
    config = tmp_path / "c.yaml"
    expected = {"latin1": f"config file {config} is not UTF-8 text (byte 0xE9",
                "folder": f"config file {config} is a folder",
                "missing": f"config file {config} does not exist",
                "unknown-key": "unknown setting compose.colour"}[kind]
    if kind == "latin1":
        config.write_bytes("publish:\n  name: café\n".encode("latin-1"))
    elif kind == "folder":
        config.mkdir()
    elif kind == "unknown-key":
        config.write_text("compose:\n  colour: red\n")
    r = iclora("build", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--until", "compose",
               "--config", str(config))
    assert_one_error_line(r, expected)
    assert not (tmp_path / "out" / "report.json").exists()
