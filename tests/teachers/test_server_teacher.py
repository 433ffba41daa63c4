"""The served teacher (``teachers.server``) against the real server (``distill_plugin.serve``) on
127.0.0.1 over the tiny teacher: same loss as offline top-k KD on the same batch (padded and packed),
retries, the echo fallback, and the start-up refusals (limit below k, wrong model, other tokenizer)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill_plugin.args import DistillConfig, TeacherServerConfig
from distill_plugin.demo.core import collate, encode
from distill_plugin.testing.addition import make_split
from distill_plugin.generation.hf import HFBackend
from distill_plugin.losses.chunked import supervised_mask
from distill_plugin.losses.terms import run_terms
from distill_plugin.modeling import final_hidden_states, output_head
from distill_plugin.offline.collator import dense_targets
from distill_plugin.offline.store import StoredRow, positions_mask
from distill_plugin.signals import TOPK_IDS, TOPK_LOGPROBS, StudentRows, TopKLogprobs
from distill_plugin.teachers import StoredTopKSource
from distill_plugin.teachers.server import ServerSetupError, ServerTopKSource

from served_teacher import faults, serve, set_faults, teacher_with_other_tokenizer

K = 8
MODEL = "tiny-teacher"
KEY_ENV, KEY = "DISTILL_TEST_TEACHER_KEY", "sk-test-3f9a1c"  # the module's server wants this key


def source(url, tokenizer, k=K, model=MODEL, **options) -> ServerTopKSource:
    fields = {"url": url, "model": model, "top_k": k, "api_key_env": KEY_ENV, **options}
    return ServerTopKSource(TeacherServerConfig(**fields), tokenizer, backoff_s=0.05)


@pytest.fixture(scope="module", autouse=True)
def api_key():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, KEY)
        yield


@pytest.fixture(scope="module")
def tokenizer(tiny_pair):
    return AutoTokenizer.from_pretrained(tiny_pair[0])


@pytest.fixture(scope="module")
def server(tiny_pair):
    """One served tiny teacher for the module, its limit at K (vLLM's ``--max-logprobs``)."""
    with serve(tiny_pair[0], "--served-model-name", MODEL, "--max-logprobs", str(K), "--api-key-env", KEY_ENV) as base:
        yield base


@pytest.fixture
def url(server):
    set_faults(server)  # none
    yield server


def padded_batch(tokenizer, n=3, seed=0):
    return collate([encode(tokenizer, row) for row in make_split(n, seed=seed)], tokenizer.pad_token_id)


def packed_batch(tokenizer, seed=1):
    """Three documents in one row, position ids restarting at each, then padding (Axolotl's V2 layout).
    Every token is trained on (``train_on_inputs``), so the documents' last positions are supervised
    and must get no teacher entry (their next token belongs to the next document)."""
    docs = padded_batch(tokenizer, 3, seed)
    docs["labels"] = torch.where(docs["attention_mask"].bool(), docs["input_ids"], -100)
    ids, labels, pos = [], [], []
    for row, lab, attn in zip(docs["input_ids"], docs["labels"], docs["attention_mask"]):
        n = int(attn.sum())
        ids += row[:n].tolist()
        labels += lab[:n].tolist()
        pos += list(range(n))
    pad = 7
    ids, labels, pos = ids + [tokenizer.pad_token_id] * pad, labels + [-100] * pad, pos + list(range(pad))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos]),
            "attention_mask": torch.tensor([[1] * (len(ids) - pad) + [0] * pad])}, docs


def offline_targets(teacher_dir, tokenizer, docs, packs, width):
    """What the offline path gives: the capture engine's top-k per document (``HFBackend.prompt_topk``,
    as ``distill-data logits`` runs it), laid out by the offline collator's ``dense_targets``."""
    backend = HFBackend(str(teacher_dir), tokenizer, device="cpu", dtype="float32")
    seqs, labels = [], []
    for row, lab, attn in zip(docs["input_ids"], docs["labels"], docs["attention_mask"]):
        n = int(attn.sum())
        seqs.append(row[:n].tolist())
        labels.append(lab[:n].numpy())
    masks = [positions_mask(lab) for lab in labels]
    captured = backend.prompt_topk(seqs, masks, K, vocab_size=len(tokenizer))
    parts = [dense_targets(StoredRow(m, i, v), lab, K) for m, (i, v), lab in zip(masks, captured, labels)]
    rows = [[parts[j] for j in pack] for pack in packs]
    ids = torch.zeros(len(rows), width, K, dtype=torch.long)
    lps = torch.full((len(rows), width, K), -torch.inf)
    for b, pack in enumerate(rows):
        cat_ids, cat_lps = np.concatenate([p[0] for p in pack]), np.concatenate([p[1] for p in pack])
        ids[b, : len(cat_ids)], lps[b, : len(cat_lps)] = torch.from_numpy(cat_ids), torch.from_numpy(cat_lps)
    return {TOPK_IDS: ids, TOPK_LOGPROBS: lps}


def loss_of(student, batch, signal, config: DistillConfig):
    mask = supervised_mask(batch["labels"])
    hidden = final_hidden_states(student, {k: v for k, v in batch.items() if k != "labels"})
    rows = StudentRows(hidden[:, :-1][mask], batch["labels"][:, 1:][mask], output_head(student))
    return run_terms(config.loss_terms(), rows, {TopKLogprobs: signal})


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_loss_equals_offline_topk_loss(tiny_pair, tokenizer, url, layout):
    teacher_dir, student_dir = tiny_pair
    if layout == "padded":
        batch = docs = padded_batch(tokenizer)
        packs = [[0], [1], [2]]
    else:
        batch, docs = packed_batch(tokenizer)
        packs = [[0, 1, 2]]
    mask = supervised_mask(batch["labels"])
    with source(url, tokenizer) as served:
        assert "prompt_logprobs" in served.connect()
        server = served.signals(batch, mask)[TopKLogprobs]
    offline = StoredTopKSource(1.0).signals(offline_targets(teacher_dir, tokenizer, docs, packs, batch["input_ids"].shape[1]), mask)[TopKLogprobs]
    assert server.capture_temperature == offline.capture_temperature == 1.0
    assert server.ids.shape == (int(mask.sum()), K)
    if layout == "packed":  # the last position of each of the first two documents has no teacher entry
        assert int((~torch.isfinite(server.logprobs[:, 0])).sum()) == 2
    finite = torch.isfinite(offline.logprobs)
    assert torch.equal(finite, torch.isfinite(server.logprobs))
    assert torch.equal(server.ids[finite], offline.ids[finite])
    torch.testing.assert_close(server.logprobs[finite], offline.logprobs[finite], rtol=0, atol=1e-5)

    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    config = DistillConfig(teacher_server=TeacherServerConfig(url=url, model=MODEL, top_k=K), temperature=2.0,
                           ce_weight=0.3)
    ours, theirs = loss_of(student, batch, server, config), loss_of(student, batch, offline, config)
    torch.testing.assert_close(ours.objective, theirs.objective, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.sums, theirs.sums, rtol=1e-6, atol=1e-6)
    assert ours.sums[0] > 0  # a real KD term, not an empty one


def test_503_and_stall_are_retried(tokenizer, url):
    """Request 1 is the start-up probe; of the batch's three, two get 503 and one stalls past the timeout."""
    batch = padded_batch(tokenizer)
    mask = supervised_mask(batch["labels"])
    set_faults(url, fail=[2, 3], stall=[4], stall_seconds=5.0)
    with source(url, tokenizer, timeout_s=1.5, max_concurrency=1) as served:
        served.connect()
        retried = served.signals(batch, mask)[TopKLogprobs]
        assert served.backend.stats["retries"] >= 3
        counters = faults(url)
        clean = served.signals(batch, mask)[TopKLogprobs]
    assert counters["failed"] == 2 and counters["stalled"] == 1
    assert torch.equal(retried.ids, clean.ids) and torch.equal(retried.logprobs, clean.logprobs)


def test_echo_fallback_gives_the_same_targets(tokenizer, url):
    batch = padded_batch(tokenizer, seed=3)
    mask = supervised_mask(batch["labels"])
    with source(url, tokenizer) as native:
        native.connect()
        via_native = native.signals(batch, mask)[TopKLogprobs]
    set_faults(url, no_prompt_logprobs=True)
    with source(url, tokenizer) as echo:
        assert "via echo" in echo.connect()
        via_echo = echo.signals(batch, mask)[TopKLogprobs]
    assert faults(url)["refused_prompt_logprobs"] == 1
    assert torch.equal(via_echo.ids, via_native.ids)
    torch.testing.assert_close(via_echo.logprobs, via_native.logprobs)


def test_limit_below_k_and_wrong_model_are_refused(tokenizer, url):
    for k, model, expected in [(K + 1, MODEL, rf"top_k: .*127\.0\.0\.1.*max allowed: {K}.*--max-logprobs {K + 1}"),
                               (K, "Qwen/not-served", r"model: .*127\.0\.0\.1.*/models serves \['tiny-teacher'\]")]:
        with source(url, tokenizer, k=k, model=model) as served:
            with pytest.raises(ServerSetupError, match=expected):
                served.connect()


def test_unreachable_server_names_the_url(tokenizer):
    from served_teacher import free_port

    with ServerTopKSource(TeacherServerConfig(url=f"http://127.0.0.1:{free_port()}/v1", model=MODEL), tokenizer,
                              max_retries=1, backoff_s=0.01) as served:
        with pytest.raises(ServerSetupError, match=r"teacher_server.url: http://127\.0\.0\.1:\d+/v1/models: giving up"):
            served.connect()


def test_mismatched_tokenizer_is_refused(tiny_pair, tokenizer, tmp_path, arithmetic_data, capsys, monkeypatch):
    """A teacher whose tokenizer orders the same bytes differently: same size, other ids. Refused by the
    source, and so by the run of ``recipes/teacher_server_qlora.yml``'s twin before any data or model
    loads: one line naming the URL (``axolotl_runs.preflight``: Axolotl's loader and the plugin's hooks)."""
    from axolotl_runs import REPO, preflight
    from distill_plugin.testing.twins import Fixtures, derive_twin

    other = teacher_with_other_tokenizer(tiny_pair[0], tmp_path / "other")
    with serve(other, "--served-model-name", MODEL, "--max-logprobs", "64") as base:  # the recipe asks for 64
        with source(base, tokenizer) as served:
            with pytest.raises(ServerSetupError, match=r"127\.0\.0\.1.* tokenises differently from the student: token id"):
                served.connect()
        monkeypatch.setenv("TEACHER_API_KEY", "test-key")  # the recipe's api_key_env
        fixtures = Fixtures(student=tiny_pair[1], data=arithmetic_data, workdir=tmp_path,
                            teacher_server={"url": base, "model": MODEL})
        twin = derive_twin(REPO / "recipes" / "teacher_server_qlora.yml", fixtures).write(tmp_path / "twin.yml")
        line = preflight(twin, capsys)
    assert line.startswith("distill_plugin: error:") and base in line and "tokenises differently" in line, line


def test_read_ahead_keeps_the_next_steps_in_flight(tiny_pair, tokenizer, url):
    """Two micro-batches per step, one step ahead: after the first step is taken, the next two
    batches' requests have been sent; batches come out in order, every one with its answer."""
    batches = [padded_batch(tokenizer, 2, seed=s) for s in range(5)]
    with source(url, tokenizer, prefetch_steps=1) as served:
        served.connect()
        ahead = served.read_ahead(iter(batches), batches_per_step=2)
        assert served.read_ahead(ahead.source, 2) is ahead  # the same epoch: the same queue
        first = [next(ahead), next(ahead)]
        assert len(ahead.queue) == 2 and all("teacher_server_request" in b for b in ahead.queue)
        rest = list(ahead)
        assert [b["input_ids"].tolist() for b in first + rest] == [b["input_ids"].tolist() for b in batches]
        for batch in first + rest:
            signal = served.signals(batch, supervised_mask(batch["labels"]))[TopKLogprobs]
            assert torch.isfinite(signal.logprobs[:, 0]).all()
        assert set(served.pop_metrics(batches_per_step=2)) == {"teacher_wait_s"}


def test_api_key_is_sent_and_never_shown(tokenizer, url, caplog):
    with source(url, tokenizer, api_key_env=None) as anonymous:
        with pytest.raises(ServerSetupError, match=r"teacher_server.url: http://127\.0\.0\.1:\d+/v1/models: HTTP 401"):
            anonymous.connect()
    with source(url, tokenizer, api_key_env="DISTILL_TEST_UNSET_VARIABLE") as unset:
        with pytest.raises(ServerSetupError, match="api_key_env: environment variable DISTILL_TEST_UNSET_VARIABLE is not set"):
            unset.connect()
    with source(url, tokenizer) as served:
        described = served.connect()
        assert KEY not in described + repr(served) + repr(served.backend) + caplog.text


def test_close_cancels_the_requests_in_flight(tokenizer, url):
    """Training ends with the read-ahead's requests still out: ``close`` cancels them, joins the loop's
    thread, and does not wait for the server."""
    with source(url, tokenizer) as served:
        served.connect()
        set_faults(url, delay_s=30.0)
        pending = served.submit(padded_batch(tokenizer))
        started = time.perf_counter()
    assert time.perf_counter() - started < 5 and pending.cancelled() and not served._thread.is_alive()


EXIT_WITH_REQUESTS_OUT = """
import atexit, sys
from transformers import AutoTokenizer
from distill_plugin.args import TeacherServerConfig
from distill_plugin.demo.core import collate, encode
from distill_plugin.testing.addition import make_split
from distill_plugin.teachers.server import ServerTopKSource

tokenizer_dir, url, key_env, model = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
atexit.register(lambda: print("loop thread alive at exit:", served._thread.is_alive()))  # atexit is LIFO: runs after the source's
served = ServerTopKSource(TeacherServerConfig(url=url, model=model, top_k=8, api_key_env=key_env), tokenizer)
served.connect()
batch = collate([encode(tokenizer, row) for row in make_split(3, seed=0)], tokenizer.pad_token_id)
served.submit(batch)
"""


def test_a_process_that_exits_with_requests_out_stops_the_loop_first(tiny_pair, url):
    """No ``close`` (a trainer's source lives until exit): interpreter exit still stops the loop's
    thread before daemon threads are frozen mid-op (a torch op there aborts the process)."""
    set_faults(url, stall=[2, 3, 4], stall_seconds=30.0)  # request 1 is the start-up probe; 2-4 the batch's
    script = [sys.executable, "-c", EXIT_WITH_REQUESTS_OUT, str(tiny_pair[0]), url, KEY_ENV, MODEL]
    proc = subprocess.Popen(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "loop thread alive at exit: False" in out, out + err[-2000:]


def test_trl_trainer_trains_from_the_served_teacher(tiny_pair, tokenizer, url, arithmetic_data, tmp_path):
    """TRL's ``DistillSFTTrainer`` with ``teacher_server``: every step logs kd_loss and teacher_wait_s, the
    requests go out (read ahead), and the student learns; ``teacher_logits`` is refused in one line."""
    from datasets import load_dataset
    from trl import SFTConfig

    from distill_plugin.trainer import make_trl_trainer_class

    dataset = load_dataset("json", data_files=str(arithmetic_data), split="train").select_columns(["messages"])
    args = SFTConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=3e-3,
                     logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", assistant_only_loss=True,
                     max_length=128, lr_scheduler_type="constant")
    served = {"url": url, "model": MODEL, "top_k": K, "api_key_env": KEY_ENV}
    trainer_cls = make_trl_trainer_class()
    trainer = trainer_cls(model=str(tiny_pair[1]), args=args, train_dataset=dataset, processing_class=tokenizer,
                          distill_config={"teacher_server": served, "kd_weight": 0.5, "ce_weight": 0.5})
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 6 and all(h["kd_loss"] > 0 and "teacher_wait_s" in h for h in steps), steps
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert faults(url)["completions"] > 1 + 6  # the start-up probe, then one request per document of each batch
    trainer.teacher_source.close()
    with pytest.raises(ValueError, match="teacher_logits is supported through Axolotl"):
        trainer_cls(model=str(tiny_pair[1]), args=args, train_dataset=dataset, processing_class=tokenizer,
                    distill_config={"teacher_logits": str(tmp_path / "store")})


def test_a_refused_start_leaves_no_loop_running(tokenizer, url):
    """``connected_source`` (the plugin's and TRL's start-up): a server that refuses (here: wrong model)
    raises the one-line error and the source's loop thread is stopped, not left for exit."""
    import threading

    from distill_plugin.teachers.server import connected_source

    def loops():
        return sum(t.name == "teacher-server" and t.is_alive() for t in threading.enumerate())

    before = loops()
    config = DistillConfig(teacher_server={"url": url, "model": "Qwen/not-served", "top_k": K, "api_key_env": KEY_ENV})
    with pytest.raises(ServerSetupError, match=r"model: .*/models serves \['tiny-teacher'\]"):
        connected_source(config, tokenizer)
    assert loops() == before
