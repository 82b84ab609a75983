"""Config files load into typed dataclasses; every mistake is an error naming the key and the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.run.config import ConfigError, apply_override, config_from_dict, load_config


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


@pytest.mark.parametrize("name", ["demo", "kth", "clevrer"])
def test_smoke_settings_live_apart_from_the_real_run(repo: Path, name: str) -> None:
    real, smoke = load_config(repo / "configs" / f"{name}.yaml"), load_config(repo / "configs" / f"{name}.yaml", smoke=True)
    assert smoke.data.name == f"{name}-smoke" and smoke.data.root == f"{real.data.root}-smoke"
    assert smoke.train.steps <= 100 and smoke.model.inner_dim <= 128  # seconds, not days
    assert smoke.autoencoder.out_dir != real.autoencoder.out_dir or name != "demo"


def test_a_split_that_no_setting_produces_is_an_error_naming_the_keys(repo: Path) -> None:
    """The shipped KTH config once trained for hours and then crashed on the missing 'val' split."""
    with pytest.raises(ConfigError, match=r"'train\.sample_split' reads split 'val'.*convert\.kth_\*_persons"):
        load_config(repo / "configs" / "kth.yaml", ["convert.kth_val_persons=[]"])
    with pytest.raises(ConfigError, match=r"'forecast\.split' reads split 'test'.*demo\.videos"):
        load_config(repo / "configs" / "demo.yaml", ["demo.videos={train: 4, val: 2, test: 0}"])
    kth = load_config(repo / "configs" / "kth.yaml")
    assert set(kth.convert.kth_val_persons).isdisjoint(kth.convert.kth_test_persons)  # validation never sees test persons


def test_relative_paths_in_a_file_resolve_against_the_project_not_the_cwd(repo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(repo / "configs" / "demo.yaml", ["eval.i3d=weights/i3d.pt"])
    assert cfg.vqvae.ckpt == str(repo / "checkpoints" / "demo_vqvae.pt")
    assert cfg.eval.i3d == str(tmp_path / "weights" / "i3d.pt")  # a command-line path: relative to where it is typed


def test_path_values_are_taken_as_written_not_as_yaml(demo_config_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(demo_config_path, ["data.root=off"]).data.root == str(tmp_path / "off")  # YAML would say False


def test_compact_flow_mappings_from_a_shell_are_read_as_meant(demo_config_path: Path) -> None:
    cfg = load_config(demo_config_path, ["demo.videos={train:16,val:4,test:4}"])
    assert cfg.demo.videos == {"train": 16, "val": 4, "test": 4}


def test_duplicate_keys_and_directories_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate key 'steps'"):
        load_config(_write(tmp_path, "train:\n  steps: 10\n  steps: 20\n"))
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_config(_write(tmp_path, "train:\n  steps: 10\ntrain:\n  lr: 0.1\n"))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_dataset_names_are_plain_identifiers(demo_config_path: Path) -> None:
    for bad in ("../../x", "/abs", "a b"):
        with pytest.raises(ConfigError, match="'data.name' must be a plain identifier"):
            load_config(demo_config_path, [f"data.name={bad}"])


def test_yes_and_no_are_words_not_booleans(demo_config_path: Path, tmp_path: Path) -> None:
    """YAML 1.1 reads `no` as False; the configs read YAML 1.2 booleans (true/false) only."""
    assert load_config(demo_config_path, ["loader.in_memory=no"]).loader.in_memory == "no"
    text = demo_config_path.read_text().replace("seed: 0\n", "seed: 0\nloader:\n  in_memory: no\n", 1)
    assert load_config(_write(tmp_path, text)).loader.in_memory == "no"
    with pytest.raises(ConfigError, match="'encode.hflip_view' must be bool"):
        load_config(demo_config_path, ["encode.hflip_view=yes"])


@pytest.mark.parametrize("override", ["seed=-1", "sample.seed=-3", "demo.seed=-1", "eval.seed=-2"])
def test_negative_seeds_are_refused(demo_config_path: Path, override: str) -> None:
    with pytest.raises(ConfigError, match="seed' must be >= 0"):
        load_config(demo_config_path, [override])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e999"])
def test_non_finite_numbers_are_refused(demo_config_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="'train.lr' must be a finite number"):
        load_config(demo_config_path, [f"train.lr={value}"])


def test_a_typo_in_the_smoke_block_is_caught_without_smoke(demo_config_path: Path, tmp_path: Path) -> None:
    text = demo_config_path.read_text().replace("  train.steps: 20\n", "  train.stpes: 20\n")
    with pytest.raises(ConfigError, match=r"\(smoke\): unknown key 'train.stpes'"):
        load_config(_write(tmp_path, text))


def test_every_key_is_listed_with_its_type_default_and_doc() -> None:
    """`python -m pipeline.run.config` (make config-keys) lists every key of the tree, each with a non-empty doc."""
    import dataclasses
    import subprocess
    import sys

    from pipeline.run.config import Config, key_listing

    cfg = Config()
    expected = [f"{top}.{name}" if dataclasses.is_dataclass(value) else top
                for top, value in vars(cfg).items() for name in (vars(value) if dataclasses.is_dataclass(value) else [None])]
    rows = key_listing()
    assert [row[0] for row in rows] == expected
    assert all(doc.strip() and kind.strip() for _, kind, _, doc in rows)
    assert dict((row[0], row[2]) for row in rows)["data.image_size"] == 64
    out = subprocess.run([sys.executable, "-m", "pipeline.run.config"], capture_output=True, text=True, check=True).stdout
    assert [line.split(":", 1)[0] for line in out.splitlines()] == expected
