"""The count cache is outside the trust boundary: nothing unsigned may change a number.

``summarize_model`` caches per-token counts under ``FLOPGATE_CACHE_DIR``. A shared (CI) cache
that anyone can write must not be able to move an audit across a threshold: an entry is used
only when its HMAC (keyed by a secret in the flopgate home folder) verifies; anything else is
recounted and overwritten.
"""

import json
import os
import stat
from pathlib import Path

import pytest

import audit.flops.summary as summary_mod
from audit.errors import InputError
from audit.flops.summary import summarize_model

MODEL, OTHER, SEQ = "llama-3.2-1b", "qwen2.5-0.5b", 64


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A cache folder and a flopgate home of this test's own (the session's are shared)."""
    cache, home = tmp_path / "cache", tmp_path / "home"
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(cache))
    monkeypatch.setenv("FLOPGATE_HOME", str(home))
    return cache, home


@pytest.fixture
def counts(monkeypatch):
    """Records every fresh count (the cache was not used when this grows)."""
    calls = []
    real = summary_mod._count

    def spy(config, seq_len, **kwargs):
        calls.append((config.ref, seq_len))
        return real(config, seq_len, **kwargs)

    monkeypatch.setattr(summary_mod, "_count", spy)
    return calls


def no_counting(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the counter ran although a good cache entry was there")

    monkeypatch.setattr(summary_mod, "_count", refuse)


def figures(summary) -> dict:
    """Everything but where the counts came from and the ref they were asked for under."""
    return summary.model_dump(exclude={"count_source", "ref"})


def entry_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


def only_entry(cache: Path) -> Path:
    files = entry_files(cache)
    assert len(files) == 1, files
    return files[0]


def divide_numbers(path: Path, factor: float = 1000.0) -> None:
    """What the attacker did: divide the per-token training FLOP by ``factor``, keeping valid
    JSON. Works on the summary wherever the entry keeps it (bare, or as text or an object
    under "summary"), and leaves every other byte of the entry (its MAC included) alone."""
    entry = json.loads(path.read_text())
    if "summary" in entry:
        inner = entry["summary"]
        data = json.loads(inner) if isinstance(inner, str) else inner
        data["train_flops_per_token"] /= factor
        entry["summary"] = json.dumps(data) if isinstance(inner, str) else data
    else:
        entry["train_flops_per_token"] /= factor
    path.write_text(json.dumps(entry))


# (a) the attack ---------------------------------------------------------------------------


def test_numbers_divided_in_the_cache_are_recounted_not_trusted(isolated, monkeypatch):
    cache, _ = isolated
    fresh = summarize_model(MODEL, SEQ)
    path = only_entry(cache)
    divide_numbers(path, 1000)

    again = summarize_model(MODEL, SEQ)
    print(f"fresh train FLOP/token {fresh.train_flops_per_token:.6e}, "
          f"after tampering the cache {again.train_flops_per_token:.6e}")
    assert again.train_flops_per_token == fresh.train_flops_per_token
    assert figures(again) == figures(fresh)
    assert again.count_source == "counted"
    assert fresh.count_source == "counted"

    # the tampered entry was overwritten with a good one: the next call uses it
    assert only_entry(cache) == path
    no_counting(monkeypatch)
    third = summarize_model(MODEL, SEQ)
    assert third.count_source == "cache"
    assert figures(third) == figures(fresh)


@pytest.mark.parametrize("damage", [
    "drop_mac", "zero_mac", "non_ascii_mac", "mac_not_a_string", "summary_as_object",
    "not_json", "empty", "a_list", "old_bare_summary", "extra_key_in_summary",
])
def test_a_damaged_entry_is_ignored_recounted_and_rewritten(isolated, counts, damage):
    cache, _ = isolated
    fresh = summarize_model(MODEL, SEQ)
    path = only_entry(cache)
    entry = json.loads(path.read_text())
    poisoned = json.loads(entry["summary"])
    poisoned["train_flops_per_token"] /= 1000
    text = {
        "drop_mac": json.dumps({"summary": json.dumps(poisoned)}),
        "zero_mac": json.dumps({"mac": "0" * 64, "summary": json.dumps(poisoned)}),
        "non_ascii_mac": json.dumps({"mac": "é" * 64, "summary": json.dumps(poisoned)}),
        "mac_not_a_string": json.dumps({"mac": 7, "summary": json.dumps(poisoned)}),
        "summary_as_object": json.dumps({"mac": entry["mac"], "summary": poisoned}),
        "not_json": '{"mac": ',
        "empty": "",
        "a_list": "[1, 2, 3]",
        "old_bare_summary": json.dumps(poisoned),  # what the unauthenticated cache wrote
        # a valid MAC over a summary that does not parse as a ModelSummary
        "extra_key_in_summary": None,
    }[damage]
    if text is None:
        from audit.attest.keys import ensure_cache_mac_key

        bad = json.dumps({**json.loads(entry["summary"]), "surprise": 1})
        mac = summary_mod._entry_mac(ensure_cache_mac_key(), path.stem, bad.encode())
        text = json.dumps({"mac": mac, "summary": bad})
    path.write_text(text)
    counts.clear()

    again = summarize_model(MODEL, SEQ)
    assert counts == [(MODEL, SEQ)]
    assert figures(again) == figures(fresh)
    assert again.count_source == "counted"
    assert json.loads(path.read_text())["summary"] == entry["summary"]  # rewritten, good again


def test_an_entry_moved_to_another_models_name_is_not_trusted(isolated, counts):
    """A good entry is bound to its cache key: a small model's entry copied over a big one's
    file (same MAC key, so the MAC itself is genuine) is recounted."""
    cache, _ = isolated
    small = summarize_model(OTHER, SEQ)
    small_file = only_entry(cache)
    big = summarize_model(MODEL, SEQ)
    big_file = next(p for p in entry_files(cache) if p != small_file)
    big_file.write_bytes(small_file.read_bytes())
    counts.clear()

    again = summarize_model(MODEL, SEQ)
    assert counts == [(MODEL, SEQ)]
    assert figures(again) == figures(big)
    assert again.train_flops_per_token != small.train_flops_per_token


# (b) another machine's key ----------------------------------------------------------------


def test_an_entry_made_under_another_mac_key_is_not_trusted(isolated, counts, tmp_path, monkeypatch):
    """A shared cache written by another machine (another flopgate home, another key) - even a
    genuine entry - is recounted here, and the entry is rewritten under this machine's key."""
    cache, _ = isolated
    theirs = summarize_model(MODEL, SEQ)
    assert counts == [(MODEL, SEQ)]
    path = only_entry(cache)
    their_bytes = path.read_bytes()

    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "another-machine"))
    ours = summarize_model(MODEL, SEQ)
    assert counts == [(MODEL, SEQ)] * 2
    assert ours.count_source == "counted"
    assert figures(ours) == figures(theirs)
    assert path.read_bytes() != their_bytes  # now under our key
    assert summarize_model(MODEL, SEQ).count_source == "cache"
    assert len(counts) == 2


def test_the_other_machines_tampered_but_validly_macd_entry_is_not_trusted(isolated, counts, tmp_path,
                                                                          monkeypatch):
    """The attacker owns the other machine (and its key): a poisoned entry with a MAC that is
    correct under their key still changes nothing here."""
    cache, home = isolated
    from audit.attest.keys import ensure_cache_mac_key

    fresh = summarize_model(MODEL, SEQ)
    path = only_entry(cache)
    their_key = ensure_cache_mac_key()
    poisoned = json.loads(json.loads(path.read_text())["summary"])
    poisoned["train_flops_per_token"] /= 1000
    text = json.dumps(poisoned)
    path.write_text(json.dumps({"mac": summary_mod._entry_mac(their_key, path.stem, text.encode()),
                                "summary": text}))
    # the attacker's machine would accept it (their key) ...
    with monkeypatch.context() as patch:
        no_counting(patch)
        assert summarize_model(MODEL, SEQ).train_flops_per_token == poisoned["train_flops_per_token"]
    # ... ours does not
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "our-machine"))
    ours = summarize_model(MODEL, SEQ)
    assert ours.train_flops_per_token == fresh.train_flops_per_token
    assert ours.count_source == "counted"


# (c) a good entry is used -----------------------------------------------------------------


def test_a_good_entry_is_used_without_counting(isolated, monkeypatch):
    fresh = summarize_model(MODEL, SEQ)
    assert fresh.count_source == "counted"
    no_counting(monkeypatch)
    cached = summarize_model(MODEL, SEQ)
    assert cached.count_source == "cache"
    assert figures(cached) == figures(fresh)
    assert cached.ref == MODEL


def test_a_cached_lookup_imports_neither_torch_nor_transformers(isolated):
    import subprocess
    import sys

    summarize_model(MODEL, SEQ)
    code = ("import sys; from audit.flops.summary import summarize_model; "
            f"s = summarize_model({MODEL!r}, {SEQ}); "
            "print(s.count_source, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ.copy(), cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.split() == ["cache", "False", "False"]


def test_no_cache_touches_neither_the_cache_nor_the_key(isolated):
    cache, home = isolated
    summary = summarize_model(MODEL, SEQ, use_cache=False)
    assert summary.count_source == "counted"
    assert not cache.exists()
    assert not home.exists()


# (d) the MAC key file ---------------------------------------------------------------------


def mac_key_file(home: Path) -> Path:
    from audit.attest.keys import cache_mac_key_path

    path = cache_mac_key_path()
    assert path.parent == home / "keys"  # beside the default signing key
    return path


def test_the_mac_key_is_made_on_first_use_0600_and_never_overwritten(isolated):
    cache, home = isolated
    summarize_model(MODEL, SEQ)
    path = mac_key_file(home)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    before, inode = path.read_bytes(), path.stat().st_ino
    assert len(bytes.fromhex(before.decode().strip())) == 32

    summarize_model(MODEL, SEQ, use_cache=True)
    summarize_model(OTHER, SEQ)
    assert path.read_bytes() == before and path.stat().st_ino == inode


def test_an_existing_mac_key_is_used_as_it_is(isolated):
    cache, home = isolated
    from audit.attest.keys import ensure_cache_mac_key

    path = mac_key_file(home)
    path.parent.mkdir(parents=True, mode=0o700)
    mine = bytes(range(32))
    path.write_text(mine.hex() + "\n")
    path.chmod(0o600)
    assert ensure_cache_mac_key() == mine

    summarize_model(MODEL, SEQ)
    entry = json.loads(only_entry(cache).read_text())
    assert entry["mac"] == summary_mod._entry_mac(mine, only_entry(cache).stem, entry["summary"].encode())
    assert path.read_text() == mine.hex() + "\n"


def test_another_process_making_the_key_first_wins_the_race(isolated, monkeypatch):
    """Two processes on a fresh home: the one whose atomic no-overwrite write loses uses the
    winner's key (so both write entries the other accepts)."""
    _, home = isolated
    import audit.attest.keys as keys

    path = mac_key_file(home)
    winner = os.urandom(32)
    real_write = keys.write_atomic

    def other_process_first(target, data, **kwargs):
        if Path(target) == path:
            real_write(target, winner.hex() + "\n", mode=0o600, overwrite=False)
        return real_write(target, data, **kwargs)

    monkeypatch.setattr(keys, "write_atomic", other_process_first)
    assert keys.ensure_cache_mac_key() == winner
    assert path.read_text().strip() == winner.hex()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_a_mac_key_others_may_read_or_write_is_refused(isolated, capsys, mode):
    cache, home = isolated
    summarize_model(MODEL, SEQ)
    path = mac_key_file(home)
    secret = path.read_text().strip()
    path.chmod(mode)

    with pytest.raises(InputError) as info:
        summarize_model(MODEL, SEQ)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and f"{mode:04o}" in message and "chmod 600" in message
    assert secret not in message
    assert secret not in capsys.readouterr().out
    assert path.read_text().strip() == secret  # refused, not replaced
    # without the cache there is nothing to authenticate: still works
    assert summarize_model(MODEL, SEQ, use_cache=False).count_source == "counted"


@pytest.mark.parametrize("content", ["", "not hex at all", "ab" * 31, "ab" * 33])
def test_a_mac_key_file_that_is_not_a_key_is_refused(isolated, content):
    _, home = isolated
    path = mac_key_file(home)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(InputError, match="cache MAC key") as info:
        summarize_model(MODEL, SEQ)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_text() == content


def test_the_key_is_nowhere_in_the_summary_or_the_cache(isolated, capsys, caplog):
    cache, home = isolated
    summary = summarize_model(MODEL, SEQ)
    cached = summarize_model(MODEL, SEQ)
    path = mac_key_file(home)
    secret = path.read_text().strip()
    for text in (summary.model_dump_json(), cached.model_dump_json(), only_entry(cache).read_text(),
                 capsys.readouterr().out, caplog.text):
        assert secret not in text
        assert str(path) not in text and path.name not in text


# (e) unwritable places --------------------------------------------------------------------


def test_a_read_only_cache_folder_still_counts(isolated, monkeypatch):
    cache, _ = isolated
    cache.mkdir()
    cache.chmod(0o555)
    try:
        first = summarize_model(MODEL, SEQ)
        second = summarize_model(MODEL, SEQ)
    finally:
        cache.chmod(0o755)
    assert figures(first) == figures(second)
    assert first.count_source == "counted"


def test_a_cache_folder_that_cannot_exist_still_counts(tmp_path, monkeypatch, counts):
    """Even as root (where 0555 stops nothing): the cache path runs through a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setenv("FLOPGATE_HOME", str(tmp_path / "home"))
    first = summarize_model(MODEL, SEQ)
    second = summarize_model(MODEL, SEQ)
    assert first.count_source == second.count_source == "counted"
    assert figures(first) == figures(second)
    assert len(counts) == 2


def test_a_home_where_no_key_can_be_made_counts_without_the_cache(tmp_path, monkeypatch, counts):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLOPGATE_CACHE_DIR", str(cache))
    monkeypatch.setenv("FLOPGATE_HOME", str(blocker / "home"))
    first = summarize_model(MODEL, SEQ)
    second = summarize_model(MODEL, SEQ)
    assert first.count_source == second.count_source == "counted"
    assert len(counts) == 2
    assert not entry_files(cache)  # nothing unauthenticated is written either
