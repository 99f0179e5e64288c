"""VLLMEngine's adapter code over the CPU test double of vLLM (FakeAsyncLLM), emulating vLLM 0.24 and 0.33.

Real vLLM needs a GPU (tools/gpu/ runs the same engine there); here every test drives the real adapter:
request building, logprob extraction, pause/update/resume sequencing, version spans, abort + resubmit,
timeouts and the NCCL rendezvous (gloo stands in for NCCL).
"""

import asyncio
import copy
import gc
import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from gspo_async.engines.base import SamplingSettings
from gspo_async.engines.hf import sequence_logprobs
from gspo_async.config import VLLMConfig, load_config
from gspo_async.engines.vllm import (EngineNeedsResync, VLLMEngine, VLLMFeatures, VLLMUnavailable, VLLMWeightSender,
                                     WeightSyncTimeout, delta_logprobs, parse_version, sampled_logprobs,
                                     weight_metadata)
from gspo_async.engines.vllm_worker import EXTENSION_CLS, IPC_DEVICE_ARG, decode_host, encode_host, on_device
from gspo_async.testing.vllm_fake import FakeAsyncLLM, Logprob, RequestOutputKind, SamplingParams, fake_api
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ["0.24.0", "0.33.0"]
PROMPTS = [[1, 40, 41, 42], [1, 60]]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny Llama saved with the char tokenizer (vocab 100), and new weights for version 1."""
    from transformers import AutoModelForCausalLM

    from gspo_async.models.tiny import tiny_config
    from gspo_async.models.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(len(tokenizer), 32, 2, 4, 256), dtype=torch.float32).eval()
    path = tmp_path_factory.mktemp("tiny-vllm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    gen = torch.Generator().manual_seed(1)
    new = {k: (v.detach() + 0.5 * torch.randn(v.shape, generator=gen)) for k, v in model.named_parameters()}
    new_model = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in new_model.named_parameters():
            p.copy_(new[k])
    return {"path": path, "model": model, "new": new, "new_model": new_model}


def make_engine(tiny, version="0.24.0", seed=5, **vllm):
    vllm.setdefault("weight_transport", "host")
    return VLLMEngine(tiny["path"], VLLMConfig(**vllm), seed=seed, api=fake_api(version), step_timeout_s=10.0)


def wait_until(cond, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def result(thread, box, timeout_s=60.0):
    thread.join(timeout_s)
    assert not thread.is_alive(), "background call did not return"
    if "error" in box:
        raise box["error"]
    return box["value"]


def assert_logprobs(model, prompt, gen, temperature, start=0, end=None):
    ref = sequence_logprobs(model, prompt, gen.tokens, temperature)[start:end]
    got = torch.tensor(gen.logprobs[start:end])
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_generate_n_responses_full_softmax_logprobs_at_temperature(tiny, version):
    engine = make_engine(tiny, version)
    try:
        groups = engine.generate(PROMPTS, 3, SamplingSettings(temperature=0.7, max_new_tokens=9))
        assert [len(g) for g in groups] == [3, 3]
        for prompt, group in zip(PROMPTS, groups):
            assert len({tuple(g.tokens) for g in group}) > 1, "the n responses of a prompt must be sampled apart"
            for g in group:
                assert g.finish_reason in ("stop", "length") and 0 < len(g.tokens) <= 9
                assert len(g.logprobs) == len(g.tokens) and g.version_spans == [(0, 0, len(g.tokens))]
                assert_logprobs(tiny["model"], prompt, g, 0.7)  # log softmax(logits / 0.7), full vocabulary
        # one single-response request per response, each salted with the weight version
        assert engine.llm.salts == ["gspo-v0"] * 6
        assert engine.stats()["tokens_total"] == sum(len(g.tokens) for grp in groups for g in grp)
    finally:
        engine.close()


def test_greedy_reports_logprobs_at_temperature_one(tiny):
    engine = make_engine(tiny)
    try:
        (group,) = engine.generate(PROMPTS[:1], 2, SamplingSettings(temperature=0.0, max_new_tokens=6))
        assert group[0].tokens == group[1].tokens
        assert_logprobs(tiny["model"], PROMPTS[0], group[0], 1.0)
    finally:
        engine.close()


def test_refuses_truncation_and_raw_logprobs_at_other_temperatures(tiny):
    engine = make_engine(tiny, logprobs_mode="raw_logprobs")
    try:
        with pytest.raises(ValueError, match="top_p: 1.0"):
            engine.generate(PROMPTS, 1, SamplingSettings(top_p=0.9))
        with pytest.raises(ValueError, match="top_k: 0"):
            engine.generate(PROMPTS, 1, SamplingSettings(top_k=5))
        with pytest.raises(ValueError, match="processed_logprobs"):
            engine.generate(PROMPTS, 1, SamplingSettings(temperature=0.7))
        (group,) = engine.generate(PROMPTS[:1], 1, SamplingSettings(temperature=1.0, max_new_tokens=4))
        assert_logprobs(tiny["model"], PROMPTS[0], group[0], 1.0)  # raw == processed at T = 1
        with pytest.raises(ValueError, match="empty"):
            engine.generate([[]], 1, SamplingSettings())
    finally:
        engine.close()


def test_engine_seed_is_per_actor(tiny):
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=8)
    runs = {}
    for name, seed in (("a", 11), ("a_again", 11), ("b", 12)):
        engine = make_engine(tiny, seed=seed)
        try:
            assert engine.engine_args["seed"] == seed
            runs[name] = [g.tokens for grp in engine.generate(PROMPTS, 2, sampling) for g in grp]
        finally:
            engine.close()
    assert runs["a"] == runs["a_again"]
    assert runs["a"] != runs["b"]


def test_engine_arguments(tiny, tmp_path):
    engine = make_engine(tiny, logprobs_mode="processed_logprobs")
    try:
        args = engine.engine_args
        assert args["logprobs_mode"] == "processed_logprobs"
        assert args["worker_extension_cls"] == "gspo_async.engines.vllm_worker.GSPOWorkerExtension"
        assert args["load_format"] == "auto" and engine.version == 0
        assert "weight_transfer_config" not in args  # host transport: no vLLM transfer engine
    finally:
        engine.close()
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((Path(tiny["path"]) / "config.json").read_text())
    engine = VLLMEngine(config_only, VLLMConfig(weight_transport="nccl"), seed=1, api=fake_api())
    try:  # no weights on disk: random ('dummy') weights until the learner's first version
        assert engine.engine_args["load_format"] == "dummy" and engine.version == -1
        assert engine.engine_args["weight_transfer_config"].backend == "nccl"
    finally:
        engine.close()
    with pytest.raises(ValueError, match="config.json"):
        VLLMEngine(tmp_path, VLLMConfig(), api=fake_api())
    with pytest.raises(ValueError, match="tensor_parallel_size: 1"):
        VLLMEngine(tiny["path"], VLLMConfig(weight_transport="ipc", tensor_parallel_size=2), api=fake_api())


def test_from_config_over_the_test_double(tiny):
    """The double is chosen by passing its api, never by the user's config schema."""
    cfg = load_config(None, ["actor.engine=vllm", "learner.weight_sync.timeout_s=7"])
    assert cfg.actor.vllm.weight_transport == "auto"
    engine = VLLMEngine.from_config(cfg, tiny["path"], seed=3, api=fake_api())
    try:
        assert isinstance(engine.llm, FakeAsyncLLM) and engine.step_timeout_s == 7
        (group,) = engine.generate(PROMPTS[:1], 1, SamplingSettings(max_new_tokens=3))
        assert len(group[0].tokens) == 3
        engine.apply_weights(tiny["new"], 1)
        assert engine.transport_last == "host"  # auto: CPU tensors go as bytes through the worker RPC
    finally:
        engine.close()
    with pytest.raises(ValueError, match="actor.engine"):
        load_config(None, ["actor.engine=vllm-fake"])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_error_says_how_to_install(tiny):
    with pytest.raises(VLLMUnavailable, match=r"(?s)GPU.*pip install vllm"):
        VLLMEngine(tiny["path"], VLLMConfig())


def test_sampled_logprob_extraction_checks_its_input():
    assert sampled_logprobs([{7: Logprob(-0.5)}, {3: Logprob(-1.25), 9: Logprob(-0.1)}], [7, 3]) == [-0.5, -1.25]
    with pytest.raises(RuntimeError, match="lack the sampled token 4"):
        sampled_logprobs([{7: Logprob(-0.5)}], [4])
    with pytest.raises(RuntimeError, match="2 logprob entries for 1"):
        sampled_logprobs([{7: Logprob(-0.5)}, {7: Logprob(-0.5)}], [7])
    with pytest.raises(RuntimeError, match="logprobs=0"):
        sampled_logprobs(None, [7])


# ------------------------------------------------------------------------------------------------------------------
# Weight updates in the middle of generation
# ------------------------------------------------------------------------------------------------------------------


def generate_across_update(tiny, version, mode, steps_before=4, max_new_tokens=12):
    """Generate; after `steps_before` engine steps apply new weights (version 1) from this thread; finish."""
    engine = make_engine(tiny, version, update_mode=mode)
    fake = engine.llm
    fake.set_step_budget(steps_before)
    try:
        thread, box = in_thread(lambda: engine.generate(
            PROMPTS, 3, SamplingSettings(temperature=1.0, max_new_tokens=max_new_tokens)))
        wait_until(lambda: fake.steps_done >= steps_before, what="the first engine steps")
        engine.apply_weights(tiny["new"], 1)
        assert engine.version == 1
        fake.set_step_budget(None)
        groups = result(thread, box)
        return engine, groups
    except BaseException:
        engine.close()
        raise


@pytest.mark.parametrize("version", VERSIONS)
def test_keep_mode_update_splits_responses_by_version(tiny, version):
    engine, groups = generate_across_update(tiny, version, "keep")
    try:
        calls = engine.llm.calls
        assert calls[:6] == ["pause:keep", "rpc:gspo_begin_reload", "rpc:gspo_load_host", "rpc:gspo_finish_reload",
                             "reset_prefix_cache", "resume"]
        split = 0
        for prompt, group in zip(PROMPTS, groups):
            for g in group:
                assert_logprobs(tiny["model"], prompt, g, 1.0, end=min(4, len(g.tokens)))  # old weights
                if len(g.tokens) > 4:  # still running at the update: old span, then new span, same request
                    split += 1
                    assert g.version_spans == [(0, 0, 4), (1, 4, len(g.tokens))]
                    got = torch.tensor(g.logprobs[4:])
                    old = sequence_logprobs(tiny["model"], prompt, g.tokens, 1.0)[4:]
                    assert (got - old).abs().max() > 1e-3  # new weights in use
                    # ...over the KV cache the old weights computed (what 'keep' keeps): not a full re-prefill
                    full_new = sequence_logprobs(tiny["new_model"], prompt, g.tokens, 1.0)[4:]
                    assert (got - full_new).abs().max() > 1e-3
        assert split > 0
        assert engine.stats()["resubmitted_total"] == 0 and engine.stats()["updates_total"] == 1
    finally:
        engine.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_abort_mode_update_resubmits_and_reprefills(tiny, version):
    engine, groups = generate_across_update(tiny, version, "abort")
    try:
        assert engine.llm.calls[0] == "pause:abort"
        split = 0
        for prompt, group in zip(PROMPTS, groups):
            for g in group:
                assert g.finish_reason in ("stop", "length")  # no response lost to the abort
                assert_logprobs(tiny["model"], prompt, g, 1.0, end=min(4, len(g.tokens)))
                if len(g.tokens) > 4:
                    split += 1
                    assert g.version_spans == [(0, 0, 4), (1, 4, len(g.tokens))]
                    # resubmitted as prompt + 4 tokens and re-prefilled: exactly the new model's full softmax
                    assert_logprobs(tiny["new_model"], prompt, g, 1.0, start=4)
        assert split > 0 and engine.stats()["resubmitted_total"] == split
        assert engine.llm.salts.count("gspo-v1") == split  # resubmissions never reuse version-0 KV
    finally:
        engine.close()


def test_fake_refuses_to_step_while_weights_reload(tiny):
    """The double's guard that would catch an adapter that forgot to pause."""
    fake = FakeAsyncLLM(model=str(tiny["path"]), worker_extension_cls=EXTENSION_CLS)

    async def one():
        await fake.collective_rpc("gspo_begin_reload")
        params = SamplingParams(max_tokens=2, logprobs=0, output_kind=RequestOutputKind.DELTA)
        return [o async for o in fake.generate({"prompt_token_ids": [1, 5]}, params, "r")]

    with pytest.raises(RuntimeError, match="did not pause"):
        asyncio.run(one())


def settle(engine):
    """Let the engine's loop run what finished generators scheduled (vLLM-side aborts go through it)."""
    gc.collect()
    for _ in range(5):
        engine._loop.call(asyncio.sleep(0))


def test_no_abort_is_sent_for_finished_requests(tiny):
    """Every response's generator runs to its end, so vLLM's GeneratorExit branch never aborts a finished
    request; the double counts such aborts (see test_double_counts_aborts_of_finished_requests)."""
    engine = make_engine(tiny)
    try:
        groups = engine.generate(PROMPTS, 3, SamplingSettings(temperature=1.0, max_new_tokens=5))
        assert sum(len(g) for g in groups) == 6
        settle(engine)
        assert engine.llm.aborts_of_finished == 0 and engine.llm.aborts == 0
    finally:
        engine.close()


def test_double_counts_aborts_of_finished_requests(tiny):
    fake = FakeAsyncLLM(model=str(tiny["path"]), worker_extension_cls=EXTENSION_CLS)
    params = SamplingParams(max_tokens=2, logprobs=0, output_kind=RequestOutputKind.DELTA)

    async def run():
        whole = fake.generate({"prompt_token_ids": [1, 5]}, params, "whole")
        assert [o.finished async for o in whole] == [False, True]  # runs to its end: no abort
        left = fake.generate({"prompt_token_ids": [1, 5]}, params, "left")
        while not (await left.__anext__()).finished:
            pass
        await left.aclose()  # closed after its final output, as a `break` leaves it for the collector
        early = fake.generate({"prompt_token_ids": [1, 5]}, SamplingParams(max_tokens=50, logprobs=0), "early")
        await early.__anext__()
        await early.aclose()  # closed while running: a real abort
        fake.shutdown()

    asyncio.run(run())
    assert fake.aborts_of_finished == 1 and fake.aborts == 1


@pytest.mark.parametrize("version,history", [("0.24.0", True), ("0.28.0", True), ("0.29.0", False)])
def test_double_slices_delta_logprobs_like_each_release(tiny, version, history):
    """vLLM < 0.29 slices a DELTA output's logprobs as history[-len(token_ids):]: an aborted request's final
    output (no new tokens) carries the whole history. The adapter keeps only the entries of the new tokens."""
    fake = FakeAsyncLLM(model=str(tiny["path"]), worker_extension_cls=EXTENSION_CLS, vllm_version=version)
    params = SamplingParams(max_tokens=20, logprobs=0, output_kind=RequestOutputKind.DELTA)
    fake.set_step_budget(3)

    async def run():
        outputs = fake.generate({"prompt_token_ids": [1, 5]}, params, "r")
        deltas = [await outputs.__anext__() for _ in range(3)]
        await fake.pause_generation(mode="abort", clear_cache=True)
        final = await outputs.__anext__()
        fake.shutdown()
        return deltas, final

    deltas, final = asyncio.run(run())
    assert [len(d.outputs[0].logprobs) for d in deltas] == [1, 1, 1]
    comp = final.outputs[0]
    assert final.finished and comp.finish_reason == "abort" and comp.token_ids == []
    assert len(comp.logprobs) == (3 if history else 0)
    assert sampled_logprobs(delta_logprobs(comp.logprobs, 0), []) == []


def test_delta_logprobs_takes_the_entries_of_the_new_tokens():
    history = [{7: Logprob(-0.5)}, {3: Logprob(-1.25)}, {9: Logprob(-2.0)}]
    assert delta_logprobs(history, 0) == []
    assert delta_logprobs(history, 2) == history[1:]
    assert delta_logprobs(history, 3) == history
    assert delta_logprobs(None, 2) is None
    with pytest.raises(RuntimeError, match="2 logprob entries for 3 tokens"):  # too few is still refused
        sampled_logprobs(delta_logprobs(history[:2], 3), [7, 3, 9])


# ------------------------------------------------------------------------------------------------------------------
# The worker extension under the double's stand-ins for vLLM
# ------------------------------------------------------------------------------------------------------------------


class ClashingExtension:
    """Defines a name vLLM's worker already has: vLLM refuses it at worker start."""

    def start_weight_update(self):
        return None


def test_double_applies_vllms_extension_name_check(tiny):
    with pytest.raises(AssertionError, match="start_weight_update, which conflicts"):
        FakeAsyncLLM(model=str(tiny["path"]), worker_extension_cls=f"{__name__}.ClashingExtension")
    fake = FakeAsyncLLM(model=str(tiny["path"]), worker_extension_cls=EXTENSION_CLS)
    assert not any(name.startswith("_gspo") or name.startswith("gspo")
                   for name in vars(type(fake.worker).__mro__[1])), "the double must not override the extension"


def test_reload_runs_the_extension_hooks_against_vllms_functions(tiny):
    """The production hooks import vLLM's reload functions and config scope; the double puts stand-ins there for
    the RPC only. They check what vLLM's own worker does: load and finalise inside torch.device(worker.device),
    within the config scope."""
    fake = FakeAsyncLLM(model=str(tiny["path"]), worker_extension_cls=EXTENSION_CLS)
    payload = encode_host(tiny["new"].items())

    async def reload():
        await fake.collective_rpc("gspo_begin_reload")
        assert fake.model.reloading and fake.model.layerwise
        assert await fake.collective_rpc("gspo_load_host", args=(payload,)) == [len(tiny["new"])]
        return await fake.collective_rpc("gspo_finish_reload")

    assert asyncio.run(reload()) == [len(tiny["new"])]
    assert not fake.model.reloading and fake.model.loads == 1 and fake.model.config_scopes == 0
    assert all(torch.equal(p, tiny["new"][k]) for k, p in fake.model.named_parameters())
    if importlib.util.find_spec("vllm") is None:
        assert "vllm" not in sys.modules  # the stand-ins lived for the RPC only
    with pytest.raises(RuntimeError, match=r"torch.device\(None\)"):
        fake.model.load_weights(tiny["new"].items())  # how the old extension loaded: outside the device scope


def test_ipc_handles_open_on_the_workers_device():
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    args = tuple(range(15))  # rebuild_cuda_tensor's arguments; index 6 is the device the actor used
    assert on_device(rebuild_cuda_tensor, args, torch.device("cuda", 3))[IPC_DEVICE_ARG] == 3
    assert on_device(rebuild_cuda_tensor, args, torch.device("cuda", 3))[:6] == args[:6]
    assert on_device(len, args, torch.device("cuda", 3)) == args  # other handles pass unchanged



def test_loads_on_a_gpu_worker_end_with_a_device_synchronise(monkeypatch):
    """On a CUDA worker, a load leaves the device scope only after torch.cuda.synchronize(worker.device), as vLLM's
    worker does, so the actor may free an IPC source tensor once the RPC returns (CPU: no GPU, the call is
    recorded; the scope is the worker's device)."""
    from gspo_async.engines.vllm_worker import GSPOWorkerExtension

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("real vLLM installed: its config scope needs the worker's real vllm_config")
    synced, default_device = [], []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))

    class Worker(GSPOWorkerExtension):
        device = torch.device("cuda", 1)

    with Worker()._gspo_loading():
        default_device.append(torch.get_default_device())
        assert synced == []  # not before the load ran
    assert default_device == [torch.device("cuda", 1)] and synced == [torch.device("cuda", 1)]
    cpu = Worker()
    cpu.device = torch.device("cpu")
    with cpu._gspo_loading():
        pass
    assert synced == [torch.device("cuda", 1)]  # a CPU worker has nothing to synchronise

# ------------------------------------------------------------------------------------------------------------------
# vLLM's NCCL weight transfer (gloo stands in), timeouts, resync
# ------------------------------------------------------------------------------------------------------------------


def join(tiny, version, step_timeout_s=10.0, update_mode="keep"):
    engine = VLLMEngine(tiny["path"], VLLMConfig(weight_transport="nccl", update_mode=update_mode), seed=2,
                        api=fake_api(version), step_timeout_s=step_timeout_s)
    sender = VLLMWeightSender("127.0.0.1", free_port(), 2, api=fake_api(version), timeout_s=20)
    thread, box = in_thread(sender.connect)
    engine.join_weight_group(**sender.actor_init_info(rank_offset=1))
    result(thread, box)
    return engine, sender


@pytest.mark.parametrize("version", VERSIONS)
def test_nccl_update_with_learner_sender(tiny, version):
    engine, sender = join(tiny, version)
    try:
        new = tiny["new"]
        thread, box = in_thread(lambda: engine.receive_weights(weight_metadata(new), 1))
        wait_until(lambda: "update_weights" in engine.llm.calls, what="the actor entering update_weights")
        sender.send(new)
        result(thread, box)
        state = engine.state_dict_for_check()
        assert all(torch.equal(state[k], new[k]) for k in new) and engine.version == 1
        assert engine.llm.calls == ["init_weight_transfer_engine", "pause:keep", "start_weight_update",
                                    "update_weights", "finish_weight_update", "reset_prefix_cache", "resume",
                                    "rpc:gspo_state_dict"]
        if version == "0.33.0":
            assert engine.llm.label == "1"  # finish_weight_update(weight_version="1")
        (group,) = engine.generate(PROMPTS[:1], 2, SamplingSettings(temperature=0.8, max_new_tokens=5))
        for g in group:
            assert g.version_spans == [(1, 0, len(g.tokens))]
            assert_logprobs(tiny["new_model"], PROMPTS[0], g, 0.8)
    finally:
        engine.close()
        sender.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_generate_during_an_update_waits_for_the_new_weights(tiny, version):
    engine, sender = join(tiny, version, update_mode="abort")
    try:
        new = tiny["new"]
        recv, recv_box = in_thread(lambda: engine.receive_weights(weight_metadata(new), 1))
        wait_until(lambda: "update_weights" in engine.llm.calls, what="the actor entering update_weights")
        gen, gen_box = in_thread(lambda: engine.generate(PROMPTS[:1], 2, SamplingSettings(max_new_tokens=4)))
        sender.send(new)
        result(recv, recv_box)
        (group,) = result(gen, gen_box)
        assert [g.version_spans for g in group] == [[(1, 0, 4)]] * 2
    finally:
        engine.close()
        sender.close()


def test_hanging_update_times_out_then_full_resync(tiny):
    engine, sender = join(tiny, "0.24.0", step_timeout_s=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(WeightSyncTimeout, match=r"(?s)version 1: step 'update_weights'.*full resync"):
            engine.receive_weights(weight_metadata(tiny["new"]), 1)  # the learner never sends
        # ends after the 1 s step timeout; the bound only tells a timeout from a hang, far from both
        assert time.monotonic() - t0 < 30
        assert engine.needs_resync and engine.version == 0
        with pytest.raises(EngineNeedsResync, match="apply_weights"):
            engine.generate(PROMPTS, 1, SamplingSettings(max_new_tokens=3))
        engine.apply_weights(tiny["new"], 2)  # a full update through the worker RPC clears the state
        assert not engine.needs_resync and engine.version == 2
        (group,) = engine.generate(PROMPTS[:1], 1, SamplingSettings(temperature=1.0, max_new_tokens=4))
        assert group[0].version_spans == [(2, 0, 4)]
        assert_logprobs(tiny["new_model"], PROMPTS[0], group[0], 1.0)
        assert engine.stats()["failed_updates_total"] == 1
    finally:
        engine.close()
        sender.close()


def test_rendezvous_without_learner_times_out(tiny):
    engine = VLLMEngine(tiny["path"], VLLMConfig(weight_transport="nccl"), api=fake_api(), step_timeout_s=0.5)
    try:
        with pytest.raises(WeightSyncTimeout, match="init_weight_transfer_engine"):
            engine.join_weight_group("127.0.0.1", free_port(), rank_offset=1, world_size=2)
        with pytest.raises(ValueError, match="world_size"):
            engine.join_weight_group("127.0.0.1", free_port(), rank_offset=2, world_size=2)
    finally:
        engine.close()
    host = make_engine(tiny)
    try:
        with pytest.raises(ValueError, match="weight_transport: nccl"):
            host.join_weight_group("127.0.0.1", free_port(), rank_offset=1, world_size=2)
    finally:
        host.close()


# ------------------------------------------------------------------------------------------------------------------
# Versions, payloads, configs
# ------------------------------------------------------------------------------------------------------------------


def test_feature_detection_by_version():
    assert parse_version("0.24.0+cu130") == (0, 24, 0) and parse_version("0.33.0rc1") == (0, 33, 0)
    f = {v: VLLMFeatures(parse_version(v)) for v in ("0.20.2", "0.21.0", "0.24.0", "0.25.0", "0.28.0", "0.33.0")}
    assert [f[v].start_finish for v in f] == [False, True, True, True, True, True]
    assert [f[v].start_takes_format for v in f] == [False, True, True, False, False, False]
    assert [f[v].packed_in_init for v in f] == [False, False, False, False, True, True]
    assert [f[v].weight_versions for v in f] == [False, False, False, False, False, True]
    assert [f[v].static_trainer_api for v in f] == [True, True, True, False, False, False]
    assert not f["0.24.0"].packed_is_safe and f["0.33.0"].packed_is_safe
    with pytest.raises(VLLMUnavailable, match="older than 0.20"):
        VLLMEngine(ROOT / "configs", VLLMConfig(), api=fake_api("0.19.0"))


def test_packed_settings_travel_where_each_version_expects_them(tiny):
    for version, in_init in (("0.24.0", False), ("0.33.0", True)):
        engine, sender = join(tiny, version)
        try:
            assert (engine._packing == {}) is in_init  # 0.28+: in the init info, else in every update info
            assert sender.packed is (version == "0.33.0")  # packed only where vLLM's stream leak is fixed
        finally:
            engine.close()
            sender.close()


def test_host_payload_round_trip():
    named = [("a", torch.randn(3, 2, dtype=torch.bfloat16)), ("scalar", torch.tensor(2.5)),
             ("empty", torch.zeros(0, 4)), ("ints", torch.arange(5))]
    back = dict(decode_host(encode_host(named)))
    for name, t in named:
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
    with pytest.raises(ValueError, match="unknown dtype"):
        list(decode_host([["x", "float99", [1], b"\0\0\0\0"]]))
