"""Config files load into typed dataclasses; every mistake is an error naming the key and the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, apply_override, config_from_dict, load_config


@pytest.mark.parametrize("name", ["demo", "kth", "clevrer"])
def test_shipped_configs_load(repo: Path, name: str) -> None:
    cfg = load_config(repo / "configs" / f"{name}.yaml")
    assert cfg.data.name == name
    assert config_from_dict(cfg.to_dict()) == cfg


def test_dataset_values_follow_the_method(repo: Path) -> None:
    kth = load_config(repo / "configs" / "kth.yaml")
    assert (kth.data.image_size, kth.data.frames_per_sample, kth.data.skip_frames, kth.data.cond_frames) == (64, 40, 0, 10)
    assert kth.data.clip_span == 40
    clevrer = load_config(repo / "configs" / "clevrer.yaml")
    assert (clevrer.data.image_size, clevrer.data.frames_per_sample, clevrer.data.skip_frames) == (128, 16, 4)
    assert clevrer.data.clip_span == 76 and clevrer.vqvae.arch == "river"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  frames_per_smaple: 10\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*data\.frames_per_smaple"):
        load_config(path)


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(_write(tmp_path, "trian: {}\n"))


def test_wrong_type_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'data\.image_size' must be int"):
        load_config(_write(tmp_path, "data:\n  image_size: big\n"))
    with pytest.raises(ConfigError, match=r"'vqvae\.arch' must be one of"):
        load_config(_write(tmp_path, "vqvae:\n  arch: vqgan\n"))


def test_impossible_value_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'data\.cond_frames' must be in"):
        load_config(_write(tmp_path, "data:\n  frames_per_sample: 8\n  cond_frames: 8\n"))


def test_set_overrides_are_typed_and_checked(demo_config_path: Path) -> None:
    cfg = load_config(demo_config_path, ["data.cond_frames=2", "demo.speed=[0.5, 1.5]"])
    assert cfg.data.cond_frames == 2 and cfg.demo.speed == [0.5, 1.5]
    with pytest.raises(ConfigError, match="unknown key 'data.nope'"):
        load_config(demo_config_path, ["data.nope=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_override(cfg, "data.cond_frames")
    with pytest.raises(ConfigError, match="'data.cond_frames' must be int"):
        load_config(demo_config_path, ["data.cond_frames=two"])


def test_smoke_overrides(demo_config_path: Path) -> None:
    assert load_config(demo_config_path, smoke=True).demo.videos["train"] < load_config(demo_config_path).demo.videos["train"]


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
