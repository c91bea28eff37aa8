"""``python -m jobs.bench soak``: the chaos soak. The annotate job on a real multi-node Ray cluster on loopback
(``ray.cluster_utils.Cluster`` in a private temp dir: a head of 1 CPU for the driver, the select pool and the
read / write / commit tasks, and two worker nodes of 1 CPU and one ``lm_slot`` each, so each holds one fused LM
actor of 0.5 CPU), the real vLLM engine on a tiny randomly initialised model of the embedded architecture (the
machinery, not the LM, is what costs), at least 200 shards of C4 web text, and faults injected on a schedule
(fractions of the shards committed) by this process while the job runs:

- ``second_driver``: a second driver on the same run while the first holds it (must exit non-zero, naming who
  holds the run; the driver kill waits for its answer);
- ``actor_kill``: an LM actor's process is SIGKILLed (found through Ray's state API);
- ``node_remove`` / ``node_add``: a worker node is removed mid-run (its LM actor with it, whose restart waits for
  room) and a fresh one joins (at its fraction, or 30 s after the removal);
- ``driver_kill``: the driver is SIGKILLed and the same command started again (it must take the lease over);
- ``poison``: every LM actor that gets a batch holding one shard dies with exit 137 (``TOOLFORMER_FAULT_POISON_SHARD``);
- ``hang``: one text's Calculator calls hang (``TOOLFORMER_FAULT_HANG_TOOL``/``_TEXT``, ``annotate.tool_timeout_s=2``);
- ``stall``: one LM batch hangs once (``TOOLFORMER_FAULT_STALL_SHARD``, ``ray.lm_batch_timeout_s``);
- ``corrupt``: bytes of one shard file overwritten after prepare;
- ``no_eligible``: documents no tool may annotate (no number, no date) in shards of their own;
- ``malformed``: an input file whose records are all malformed JSON (every one skipped at prepare).

The same prepared shards are first annotated without faults on the same cluster (the uninterrupted run). The
soak's committed output must equal it row for row on every shard committed in both (the hung text's Calculator
row aside, whose calls must all have timed out), every input record must be committed, skipped at prepare with a
reason, or in a quarantined shard, and only the poison and corrupt shards may be quarantined, each with its
cause. A false check exits 1 (through ``jobs.bench``). ``--faults`` picks a subset (the test runs one).

The tiny model: SmolLM2-135M's config (vocabulary, tokenizer) shrunk to 2 layers of width 128, random weights
from a fixed seed, built once into the model cache. The start-of-call tokens (``[``, `` [``) and the closing ones
(``)``, ``]``, ``)]``) are lifted into the top-20 by a constant hidden dimension that only their output weights
read: a uniformly random model never has ``[`` among its 20 most likely tokens, and its constrained calls would
rarely close; with them there, positions come from the top-k log-probs and every sampled call closes, as with a
trained model. Sampling is constrained (``annotate.call_syntax=constrained``): a random model's free samples never
parse, and the tools must be called for the tool faults to mean anything.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.harness import REPO

FAULTS = ("actor_kill", "node_remove", "node_add", "driver_kill", "second_driver", "poison", "hang", "stall",
          "corrupt", "no_eligible", "malformed")
C4 = "webtext/c4_sample_1000.jsonl.gz"
LM_CPUS = 0.5  # what an LM actor asks; the state API tells LM actors from the select actor (0.1) by it
GIB = 1024**3


# -- inputs ---------------------------------------------------------------------------------------------------
def shared_data() -> Path:
    return Path(os.environ.get("TOOLFORMER_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_inputs(folder: Path, n_docs: int, faults: set[str]) -> dict:
    """C4 documents (≤ 600 characters, so each is one shard of one or two texts; plus two longer ones that
    prepare skips as too long), documents with no number and no date (no tool's heuristic passes), and a file
    of malformed JSON lines. Returns the files and how many records each holds (the documents in)."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(shared_data() / C4, "rt") as f:
        docs = [json.loads(line) for line in f]
    short = [d for d in docs if len(d["text"]) <= 600]
    plain = [d for d in short if not re.search(r"\d", d["text"])]  # no number anywhere
    n_plain = 2 if "no_eligible" in faults else 0
    # In file order; with at least 3 documents whose arithmetic the Calculator's heuristic accepts (the hanging
    # call needs one; the first 30 short documents hold a single one).
    from toolformer.tools.calculator import calculator_rule

    pool = [d for d in short if not any(d is p for p in plain[:n_plain])]
    arithmetic = [i for i, d in enumerate(pool) if calculator_rule(d["text"], d["url"], 0.0, 0)][:3]
    rest = [i for i in range(len(pool)) if i not in arithmetic][: max(0, n_docs - n_plain - len(arithmetic))]
    picked = [pool[i] for i in sorted(arithmetic + rest)]
    if len(picked) < n_docs - n_plain:
        raise SystemExit(f"{C4} has only {len(picked)} short documents, {n_docs - n_plain} asked")
    long = [d for d in docs if len(d["text"]) > 600][:2]
    files = {"c4.jsonl": picked[: len(picked) // 2] + long + picked[len(picked) // 2:]}
    if n_plain:
        # Real web text with its URL and date removed: no date for Calendar, no number for the Calculator.
        files["no_eligible.jsonl"] = [{"text": d["text"]} for d in plain[:n_plain]]
    out = {}
    for name, records in files.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        out[str(folder / name)] = len(records)
    if "malformed" in faults:
        bad = ['{"text": "an unterminated record', "not json at all", '{"text": 12, "url": ', "[1, 2,", "\x00\x01{"]
        (folder / "malformed.jsonl").write_text("\n".join(bad) + "\n")
        out[str(folder / "malformed.jsonl")] = len(bad)
    return out


TINY_MODEL = "soak-tiny-llama-v1"  # change the name when tiny_model changes: the cache is keyed by it


def tiny_model(seed: int = 0) -> dict:
    """The tiny model's folder (built once into the model cache, deterministic) and what it is."""
    from toolformer.models import cache_root

    folder = cache_root() / "models" / f"{TINY_MODEL}-seed{seed}"
    if not (folder / "soak_model.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        try:
            info = build_tiny_model(tmp, seed)
            (tmp / "soak_model.json").write_text(json.dumps(info))
            try:
                os.replace(tmp, folder)
            except OSError:  # another soak built it meanwhile: same seed, same weights
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(folder), **json.loads((folder / "soak_model.json").read_text())}


def build_tiny_model(folder: Path, seed: int = 0) -> dict:
    """The embedded model's architecture and tokenizer, 2 layers of width 128, random weights (see the module doc)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from toolformer.models import ensure_embedded_model

    src = ensure_embedded_model()
    tok = AutoTokenizer.from_pretrained(src)
    cfg = LlamaConfig.from_pretrained(src)
    cfg.update(dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                    intermediate_size=256, tie_word_embeddings=False))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    vocab = {i: tok.convert_tokens_to_string([t]) for t, i in tok.get_vocab().items()}
    starts = sorted(i for i, s in vocab.items() if s in ("[", " ["))
    closing = sorted(i for i, s in vocab.items() if s in (")", ")]", "]"))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0  # a constant direction in the residual stream ...
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[starts, 0] = 0.3  # ... that only the start-of-call tokens read: top-20, p ≈ 7e-4
        model.lm_head.weight[closing, 0] = 0.3  # and the closing ones: a constrained call closes in a few tokens
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"name": TINY_MODEL, "parameters": sum(p.numel() for p in model.parameters()), "layers": 2,
            "hidden_size": 128, "vocab_size": cfg.vocab_size, "seed": seed, "lifted_token_ids": starts + closing}


CONFIG = """\
name: soak
model: {{name_or_path: {model}, dtype: float32}}
engine: {{max_model_len: 1024, cpu_kv_cache_gib: 1, top_logprobs: 20}}
corpus:
  paths: {paths}
  max_text_tokens: 64
  max_doc_chars: 600
annotate:
  tools: [Calculator, Calendar]
  call_syntax: constrained   # a random model's free samples never parse; constrained ones are calls to run
  defaults: {{max_call_tokens: 12}}
  per_tool:
    Calculator: {{tau_s: 0.0, top_k: 2, num_samples: 2, max_call_tokens: 24}}
    Calendar: {{tau_s: 0.0, top_k: 2, num_samples: 2}}
  batch_size: 4
shards: {{docs_per_shard: 1, progress_every_shards: 25}}
ray:
  fuse_lm: true
  # LM actors on worker nodes only, one per node (the custom resource stands in for a GPU node's accelerator):
  # removing a worker always takes an LM actor with it, whose restart waits for a node to join
  lm: {{actors: {lm_actors}, num_cpus: {lm_cpus}, memory_gb: 1.0, resources: {{lm_slot: 1}}}}
  select: {{num_cpus: 0.1, memory_gb: 0.25}}
  io_memory_gb: 0.25
"""


# -- the cluster ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SoakCluster:
    """A head and worker nodes on loopback in a private temp dir (its own address file: other Ray users of this
    machine never see it), stopped by its own handles."""

    def __init__(self, temp_dir: Path, workers: int = 2, cpus: int = 1, memory_gib: float = 4.0):
        from ray.cluster_utils import Cluster

        self.temp_dir, self.cpus, self.memory = str(temp_dir), cpus, int(memory_gib * GIB)
        self.dashboard_port = _free_port()
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=cpus, memory=self.memory, node_ip_address="127.0.0.1", temp_dir=self.temp_dir,
            include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=self.dashboard_port))
        for _ in range(workers):
            self.add()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self):
        """A worker node: 1 CPU and one LM slot."""
        return self.cluster.add_node(num_cpus=self.cpus, memory=self.memory, node_ip_address="127.0.0.1",
                                     temp_dir=self.temp_dir, resources={"lm_slot": 1})

    def workers(self) -> list:
        return list(self.cluster.worker_nodes)

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()


def ray_actors(address: str) -> list[dict]:
    """Every actor Ray's state API knows (alive and dead) with its pid, node, resources and restarts."""
    from ray.util.state import list_actors

    try:
        return [a if isinstance(a, dict) else a.__dict__ for a in list_actors(
            address=address, limit=10_000, detail=True, raise_on_missing_output=False, timeout=20)]
    except Exception:  # noqa: BLE001 - the state API is an observer: a failed query is retried at the next poll
        return []


def is_lm(actor: dict) -> bool:
    """An LM actor: it asks for an ``lm_slot`` (and 0.5 CPU; the select actor asks 0.1 and no slot)."""
    res = actor.get("required_resources") or {}
    return bool(res.get("lm_slot")) or abs(float(res.get("CPU", 0)) - LM_CPUS) < 1e-6


class CpuMeter:
    """CPU-seconds of this process and every process below it (drivers, Ray's daemons and workers, the engines in
    them), sampled every ``interval_s`` in a thread; a process keeps its last sample after it ends. On a machine
    shared with other work, wall time stretches with their load; the CPU a run needed does not (much)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.seen: dict[tuple[int, float], float] = {}  # (pid, start time) → CPU seconds at its last sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.seen[(p.pid, p.create_time())] = t.user + t.system  # its own, not its reaped children's
            except psutil.Error:
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._sample()
            self._stop.wait(self.interval_s)

    def total(self) -> float:
        with self._lock:
            self._sample()
            return sum(self.seen.values())

    def stop(self) -> None:
        self._stop.set()


# -- a run: one or more drivers on one output dir --------------------------------------------------------------
class Driver:
    def __init__(self, cmd: list[str], env: dict, log: Path, role: str, t0: float):
        self.role, self.log, self.t0 = role, log, t0
        self.started = time.perf_counter()
        self.out = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.killed = False
        self.ended: float | None = None  # stamped the moment the process exits (a thread waits on it)
        threading.Thread(target=self._stamp, daemon=True).start()

    def _stamp(self) -> None:
        self.proc.wait()
        self.ended = time.perf_counter()

    def kill(self) -> None:
        self.killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def record(self) -> dict:
        self.out.close()
        text = self.log.read_text(errors="replace")
        return {"role": self.role, "pid": self.proc.pid, "started_s": round(self.started - self.t0, 1),
                "seconds": round((self.ended or time.perf_counter()) - self.started, 1), "rc": self.proc.returncode,
                "killed": self.killed, "log": str(self.log), "last_lines": text.strip().splitlines()[-6:]}


def markers(run: Path) -> set[str]:
    return {p.stem for p in (run / "markers" / "annotate").glob("*.json")}


def wait(driver: Driver, timeout: float) -> None:
    try:
        driver.proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        driver.kill()


# -- outputs ------------------------------------------------------------------------------------------------------
def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def rows(run: Path, shard: str, what: str = "annotations") -> list[dict]:
    return pq.read_table(run / what / f"{shard}.parquet").to_pylist()


TOOLS = ("Calculator", "Calendar")  # the order a committed shard's rows follow (text, then tool)


class Reference:
    """The uninterrupted run's rows, shard by shard: a Ray run's committed shards (``ray``), or the single-process
    run's files (``local``: ``annotations.parquet``, ``texts.parquet``) split by the manifest's texts."""

    def __init__(self, run: Path, prepared: Path, kind: str):
        self.run, self.kind = run, kind
        if kind == "local":
            self._ann = {(r["text_id"], r["tool"]): r for r in pq.read_table(run / "annotations.parquet").to_pylist()}
            self._texts = {r["text_id"]: r for r in pq.read_table(run / "texts.parquet").to_pylist()}
            self._ids = {s["shard_id"]: pq.read_table(prepared / s["path"], columns=["text_id"]).column("text_id")
                         .to_pylist() for s in manifest(prepared)["shards"]}

    def committed(self) -> set[str]:
        return markers(self.run) if self.kind == "ray" else set(self._ids)

    def annotations(self, sid: str) -> list[dict]:
        if self.kind == "ray":
            return rows(self.run, sid)
        return [self._ann[(t, tool)] for t in self._ids[sid] for tool in TOOLS if (t, tool) in self._ann]

    def texts(self, sid: str) -> list[dict]:
        if self.kind == "ray":
            return rows(self.run, sid, "texts")
        return [self._texts[t] for t in self._ids[sid] if t in self._texts]


def compare(ref: Reference, chaos: Path, shards: list[str], hang_text: str | None) -> dict:
    """Row for row over the shards committed in both: annotations (discrete fields exactly, losses within 1e-3
    nats) and texts (exactly); the hung text's Calculator row is compared apart."""
    from benchmarks.ray import same_annotations

    a, b, hung = [], [], []
    texts_equal, first = True, ""
    for sid in shards:
        mine, theirs = rows(chaos, sid), ref.annotations(sid)
        for x, y in zip(mine, theirs):
            if hang_text and x["text_id"] == hang_text and x["tool"] == "Calculator":
                hung.append((x, y))
                continue
            a.append(x), b.append(y)
        if len(mine) != len(theirs):
            a.append({"text_id": f"{sid}: {len(mine)} rows against {len(theirs)}"})
        if rows(chaos, sid, "texts") != ref.texts(sid):
            texts_equal, first = False, first or f"{sid}: texts differ"
    same, diff = same_annotations(a, b) if a else (False, "nothing to compare")
    out = {"reference": ref.kind, "shards_compared": len(shards), "annotation_rows": len(a) + len(hung),
           "annotations_equal": same, "texts_equal": texts_equal, "first_difference": diff or first}
    if hang_text:
        cands = [(x["candidates"], y["candidates"]) for x, y in hung]
        out["hung_row"] = {
            "text_id": hang_text, "compared": len(hung) == 1,
            "calls_in_uninterrupted_run": sum(len(y) for _, y in cands),
            "calls_timed_out": sum("timeout" in (c["error"] or "") for x, _ in cands for c in x),
            "errors": sorted({c["error"] or "" for x, _ in cands for c in x}),
            # same calls sampled at the same positions; only their execution differs
            "same_calls": all([(c["position"], c["input"]) for c in x] == [(c["position"], c["input"]) for c in y]
                              for x, y in cands),
        }
    return out


def accounting(run: Path, inputs: dict[str, int]) -> dict:
    """Documents in = committed + skipped (at prepare, in shards) + in quarantined shards; the rest is lost."""
    m = manifest(run)
    done = markers(run)
    quarantined = {p.stem for p in (run / "quarantine" / "annotate").glob("*.json")}
    committed = skipped_in_shards = in_quarantine = 0
    unaccounted = []
    for s in m["shards"]:
        sid = s["shard_id"]
        if sid in done:
            docs = {r["doc_id"] for r in rows(run, sid, "texts")}
            stats = json.loads((run / "stats" / "annotate" / f"{sid}.json").read_text())
            skipped = stats.get("skipped") or stats.get("skips") or 0
            skipped = sum(skipped.values()) if isinstance(skipped, dict) else int(skipped)
            committed += len(docs)
            skipped_in_shards += skipped
            if len(docs) + skipped != s["n_docs"]:
                unaccounted.append(sid)
        elif sid in quarantined:
            in_quarantine += s["n_docs"]
        else:
            unaccounted.append(sid)
    docs_in = sum(inputs.values())
    at_prepare = int((m.get("skips") or {}).get("total", 0))
    return {"documents_in": docs_in, "committed": committed, "skipped_at_prepare": at_prepare,
            "skipped_at_prepare_by_reason": (m.get("skips") or {}).get("by_reason", {}),
            "skipped_in_shards": skipped_in_shards, "in_quarantined_shards": in_quarantine,
            "lost": docs_in - committed - at_prepare - skipped_in_shards - in_quarantine,
            "shards_unaccounted": unaccounted}


def quarantine(run: Path) -> list[dict]:
    out = []
    for p in sorted((run / "quarantine" / "annotate").glob("*.json")):
        q = json.loads(p.read_text())
        out.append({"shard": p.stem, "attempts": q.get("attempts"), "cause": (q.get("error") or "")[:400]})
    return out


def funnel_timeouts(stats: dict) -> dict:
    return {tool: {k: v for k, v in f.items() if "timeout" in k} for tool, f in (stats.get("funnel") or {}).items()}


# -- the soak -----------------------------------------------------------------------------------------------------
class Soak:
    def __init__(self, args):
        self.args = args
        self.faults = set(FAULTS if args.faults == "all" else args.faults.split(","))
        unknown = self.faults - set(FAULTS)
        if unknown:
            raise SystemExit(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        self.work = Path(args.work_dir or tempfile.mkdtemp(prefix="toolformer-soak-"))
        if self.work.exists() and any(self.work.iterdir()) and not (self.work / ".soak").exists():
            raise SystemExit(f"--work-dir {self.work} is not empty and not a soak's work dir: give a new one")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        (self.work / ".soak").touch()  # what makes the folder safe to clear by the next soak
        # Ray's files (sockets, logs, the cluster address file) in a short private folder.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="tfsoak-", dir="/tmp"))
        (self.ray_tmp / "ray").mkdir()
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "RAY_TMPDIR": str(self.ray_tmp), "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        self.env.pop("RAY_ADDRESS", None)
        os.environ.update({k: self.env[k] for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                       "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")})
        os.environ.pop("RAY_ADDRESS", None)
        self.t0 = time.perf_counter()
        self.load_start = round(os.getloadavg()[0], 1)
        self.cpu = CpuMeter()
        self.events: list[dict] = []
        self.drivers: list[dict] = []
        self.actors: dict[str, dict] = {}  # actor id → latest state seen
        self.sinks: dict[str, dict] = {}  # telemetry sink → its last snapshot
        self.cluster: SoakCluster | None = None

    def note(self, fault: str, what: str, **extra) -> dict:
        e = {"fault": fault, "at_s": round(time.perf_counter() - self.t0, 1), "what": what, **extra}
        self.events.append(e)
        print(f"[soak {e['at_s']:7.1f}s] {fault}: {what}", file=sys.stderr, flush=True)
        return e

    def job(self, module: str, run: Path, extra: list[str] = (), env: dict | None = None, role: str = "") -> Driver:
        cmd = [sys.executable, "-m", module, "--config", str(self.config), f"output_dir={run}",
               f"ray.address={self.cluster.address}", *self.overrides, *extra]
        log = self.work / "logs" / f"{len(list((self.work / 'logs').glob('*.log'))):02d}-{role or module}.log"
        log.parent.mkdir(exist_ok=True)
        return Driver(cmd, env or self.env, log, role or module, self.t0)

    def poll_telemetry(self) -> None:
        """The job's own telemetry (one record per stage actor start) from each driver's sink, kept past the
        driver's death (a killed driver never writes stats.json)."""
        import ray

        try:
            names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith("toolformer-telemetry-")]
            for a in names:
                sink = ray.get_actor(a["name"], namespace=a["namespace"])
                self.sinks[a["name"]] = ray.get(sink.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - an observer: a sink gone with its driver keeps its last snapshot
            pass

    def engine_starts(self, names) -> int:
        return sum(1 for n in names for r in self.sinks.get(n, {}).values() if r.get("stage") in ("lm", "sample", "score")
                   and r.get("setup_s") is not None)

    def poll_actors(self) -> None:
        self.poll_telemetry()
        for a in ray_actors(self.cluster.address):
            if "MapWorker" in (a.get("class_name") or "") or "MapWorker" in (a.get("repr_name") or ""):
                pids = self.actors.get(a["actor_id"], {}).get("pids", []) + [a.get("pid")]
                self.actors[a["actor_id"]] = {k: a.get(k) for k in ("actor_id", "job_id", "state", "pid", "node_id",
                                                                    "num_restarts", "required_resources")} | {
                    "death_cause": str(a.get("death_cause") or "")[:300],
                    "pids": sorted({p for p in pids if p})}

    # -- steps --
    def setup(self) -> None:
        import ray

        self.model = tiny_model()
        self.inputs = write_inputs(self.work / "inputs", self.args.shards, self.faults)
        self.config = self.work / "soak.yaml"
        self.config.write_text(CONFIG.format(model=self.model["path"], paths=json.dumps(list(self.inputs)),
                                             lm_actors=self.args.lm_actors, lm_cpus=LM_CPUS))
        self.overrides = list(self.args.overrides)
        self.cluster = SoakCluster(self.ray_tmp / "ray", workers=2)
        ray.init(address=self.cluster.address, log_to_driver=False)
        self.note("cluster", f"head + {len(self.cluster.workers())} workers (1 CPU each, 1 lm_slot per worker) "
                             f"on 127.0.0.1 ({self.cluster.address})")
        self.prepared = self.work / "prepared"
        d = self.job("jobs.prepare", self.prepared, [f"prepare.runner={self.args.prepare_runner}"], role="prepare")
        wait(d, 600)
        rec = self.prepare_record = d.record()
        if rec["rc"] != 0:
            raise RuntimeError(f"prepare failed: {rec}")
        self.manifest = manifest(self.prepared)
        self.shard_ids = [s["shard_id"] for s in self.manifest["shards"]]

    def clean_run(self) -> None:
        self.clean = self.work / "clean"
        cpu0 = self.cpu.total()
        if self.args.reference == "ray":
            shutil.copytree(self.prepared, self.clean)
            d = self.job("jobs.annotate", self.clean, role="uninterrupted")
        else:  # the single-process pipeline over the same inputs: no Ray, no shards, one engine
            d = self.job("jobs.annotate", self.clean, ["annotate.runner=local"], role="uninterrupted-local")
        deadline = time.perf_counter() + self.args.timeout
        last = 0.0
        while d.proc.poll() is None and time.perf_counter() < deadline:
            if time.perf_counter() - last > 10:
                self.poll_actors()
                last = time.perf_counter()
            time.sleep(0.5)
        wait(d, 1)
        self.clean_cpu = self.cpu.total() - cpu0
        self.poll_actors()
        rec = d.record()
        self.clean_record = rec
        if rec["rc"] != 0:
            raise RuntimeError(f"the uninterrupted run failed: {rec}")
        self.clean_stats = json.loads((self.clean / "stats.json").read_text())
        self.reference = Reference(self.clean, self.prepared, self.args.reference)

    def choose_targets(self) -> dict:
        """Which shards the faults hit: spread over the run, each a different shard."""
        n = len(self.shard_ids)
        taken: set[str] = set()
        m = self.manifest["shards"]
        plain = {s["shard_id"] for s in m if any("no_eligible" in i for i in s["inputs"])}
        taken |= plain

        def near(frac: float, ok=lambda sid: True) -> str | None:
            order = sorted(range(n), key=lambda i: abs(i - frac * n))
            for i in order:
                sid = self.shard_ids[i]
                if sid not in taken and ok(sid):
                    taken.add(sid)
                    return sid
            return None

        t: dict = {"no_eligible": sorted(plain)}
        if "hang" in self.faults:  # a text whose Calculator calls the uninterrupted run executed
            calls = {}
            for sid in self.shard_ids:
                for r in self.reference.annotations(sid):
                    if r["tool"] == "Calculator" and r["n_candidates"]:
                        calls.setdefault(sid, (r["text_id"], r["n_candidates"]))
            sid = near(0.7, lambda s: s in calls)
            t["hang"] = {"shard": sid, "text_id": calls[sid][0], "calls": calls[sid][1]} if sid else None
        if "poison" in self.faults:
            t["poison"] = near(self.args.poison_at)
        if "corrupt" in self.faults:
            t["corrupt"] = near(0.12)
        if "stall" in self.faults:
            t["stall"] = near(0.22)
        return t

    def chaos_run(self) -> None:
        a = self.args
        self.chaos = self.work / "chaos"
        shutil.copytree(self.prepared, self.chaos)
        t = self.targets = self.choose_targets()
        env = dict(self.env)
        extra = [f"shards.max_failures={a.max_failures}", f"ray.batch_attempts={a.batch_attempts}",
                 "shards.lease_ttl_s=30", "shards.lease_heartbeat_s=2"]
        if t.get("poison"):
            env["TOOLFORMER_FAULT_POISON_SHARD"] = t["poison"]
            self.note("poison", f"{t['poison']}: every LM actor that gets a batch holding it exits 137")
        if t.get("hang"):
            env.update(TOOLFORMER_FAULT_HANG_TOOL="Calculator", TOOLFORMER_FAULT_HANG_TEXT=t["hang"]["text_id"])
            extra.append("annotate.tool_timeout_s=2")
            self.note("hang", f"the Calculator calls of {t['hang']['text_id']} ({t['hang']['shard']}) hang; "
                              "annotate.tool_timeout_s=2")
        if t.get("stall"):
            self.stall_flag = self.work / "stalled.flag"
            env.update(TOOLFORMER_FAULT_STALL_SHARD=t["stall"], TOOLFORMER_FAULT_STALL_ONCE_FILE=str(self.stall_flag))
            extra.append(f"ray.lm_batch_timeout_s={a.lm_batch_timeout_s}")
            self.note("stall", f"the first LM batch holding {t['stall']} hangs; "
                               f"ray.lm_batch_timeout_s={a.lm_batch_timeout_s}")
        if t.get("corrupt"):
            path = self.chaos / "shards" / f"{t['corrupt']}.parquet"
            data = bytearray(path.read_bytes())
            data[len(data) // 3: len(data) // 3 + 64] = b"\xde\xad\xbe\xef" * 16
            path.write_bytes(bytes(data))
            self.note("corrupt", f"64 bytes of shards/{t['corrupt']}.parquet overwritten after prepare")
        if t.get("no_eligible"):
            self.note("no_eligible", f"{len(t['no_eligible'])} shards of documents with no number and no date: "
                                     f"{', '.join(t['no_eligible'])}")
        if "malformed" in self.faults:
            bad = [f for f in self.inputs if f.endswith("malformed.jsonl")][0]
            self.note("malformed", f"{Path(bad).name}: {self.inputs[bad]} malformed JSON lines")
        self.chaos_env, self.chaos_extra = env, extra

        expected = len(self.shard_ids) - sum(bool(t.get(k)) for k in ("poison", "corrupt"))
        schedule = [(f, frac) for f, frac in (("second_driver", 0.0), ("actor_kill", a.at_actor_kill),
                                              ("node_remove", a.at_node_remove), ("node_add", a.at_node_add),
                                              ("driver_kill", a.at_driver_kill)) if f in self.faults]
        started, cpu0 = time.perf_counter(), self.cpu.total()
        deadline = started + a.timeout
        driver = self.job("jobs.annotate", self.chaos, extra, env, role="chaos-1")
        self.chaos_drivers = [driver]
        second: Driver | None = None
        removed, removed_at = None, 0.0
        last_poll = 0.0
        while True:
            done = len(markers(self.chaos))
            if time.perf_counter() - last_poll > 10:
                self.poll_actors()
                last_poll = time.perf_counter()
            holds = done >= 1 or (self.chaos / "_lease.json").exists()
            for fault, frac in list(schedule):
                if driver.proc.poll() is not None or not holds or (done < frac * expected and fault != "node_add"):
                    continue
                if fault == "node_add" and "node_remove" in self.faults and (
                        removed is None or (done < frac * expected and time.perf_counter() - removed_at < 30)):
                    continue  # a replacement joins at its fraction of the run, or 30 s after the removal
                # The second driver must meet the first one alive: the kill waits for its answer.
                if fault == "driver_kill" and second is not None and second.proc.poll() is None:
                    continue
                schedule.remove((fault, frac))
                if fault == "second_driver":
                    second = self.job("jobs.annotate", self.chaos, extra, env, role="second-driver")
                    self.note(fault, f"a second driver (pid {second.proc.pid}) on the run while pid "
                                     f"{driver.proc.pid} holds it ({done} shards committed)")
                elif fault == "actor_kill":
                    self.kill_lm_actor(done)
                elif fault == "node_remove":
                    removed, removed_at = self.remove_node(done), time.perf_counter()
                elif fault == "node_add":
                    node = self.cluster.add()
                    self.note(fault, f"node {node.node_id[:12]} (1 CPU) joined ({done} shards committed)")
                elif fault == "driver_kill":
                    driver.kill()
                    self.drivers.append(driver.record())
                    self.note(fault, f"driver pid {driver.proc.pid} SIGKILLed with {done} shards committed; "
                                     "the same command started again")
                    driver = self.job("jobs.annotate", self.chaos, extra, env, role="chaos-2-resubmitted")
                    self.chaos_drivers.append(driver)
            if second is not None and second.proc.poll() is not None and "second_rec" not in self.__dict__:
                self.second_rec = second.record()
                self.drivers.append(self.second_rec)
            if driver.proc.poll() is not None or time.perf_counter() > deadline:
                break
            time.sleep(0.5)
        if driver.proc.poll() is None:
            driver.kill()
            self.note("timeout", f"the chaos run passed --timeout {a.timeout}s: driver killed")
        driver.proc.wait()
        time.sleep(0.1)  # the exit stamp
        self.chaos_seconds = (driver.ended or time.perf_counter()) - started
        self.chaos_cpu = self.cpu.total() - cpu0
        self.poll_actors()
        self.drivers.append(driver.record())
        if second is not None and "second_rec" not in self.__dict__:
            wait(second, 120)
            self.second_rec = second.record()
            self.drivers.append(self.second_rec)
        self.unfired = [f for f, _ in schedule]

    def kill_lm_actor(self, done: int) -> None:
        self.poll_actors()
        live = [x for x in self.actors.values() if x["state"] == "ALIVE" and is_lm(x) and x["pid"]]
        if not live:
            self.note("actor_kill", "no live LM actor found", fired=False)
            return
        victim = live[0]
        try:
            os.kill(victim["pid"], signal.SIGKILL)
            self.note("actor_kill", f"LM actor {victim['actor_id'][:12]} (pid {victim['pid']}, node "
                                    f"{(victim['node_id'] or '')[:12]}) SIGKILLed ({done} shards committed)")
        except ProcessLookupError:
            self.note("actor_kill", f"LM actor pid {victim['pid']} was already gone", fired=False)

    def remove_node(self, done: int):
        self.poll_actors()
        lm_nodes = {x["node_id"] for x in self.actors.values() if x["state"] == "ALIVE" and is_lm(x)}
        workers = self.cluster.workers()
        node = next((w for w in workers if w.node_id in lm_nodes), workers[0] if workers else None)
        if node is None:
            self.note("node_remove", "no worker node to remove", fired=False)
            return None
        on_it = [x for x in self.actors.values() if x["state"] == "ALIVE" and x["node_id"] == node.node_id]
        self.cluster.cluster.remove_node(node, allow_graceful=False)
        self.note("node_remove", f"worker node {node.node_id[:12]} removed with {len(on_it)} stage actors on it "
                                 f"({sum(is_lm(x) for x in on_it)} LM) ({done} shards committed)",
                  lm_actors_on_node=sum(is_lm(x) for x in on_it))
        return node

    def actor_logs(self) -> dict:
        """What the stage actors said as they died, from the Ray session logs of every node of this cluster
        (their stderr stays there; the driver shows it only with --verbose)."""
        said = {"watchdog_endings": "watchdog: the lm batch ran over", "poison_exits": "fault injection: a poison batch"}
        counts: dict = dict.fromkeys(said, 0)
        stalled = None
        if getattr(self, "stall_flag", None) and self.stall_flag.exists():  # "stalled in stage lm (pid N)"
            stalled = re.search(r"pid (\d+)", self.stall_flag.read_text())
        # the log monitor moves a dead worker's files to logs/old/
        for path in self.ray_tmp.glob("ray/session_*/logs/**/worker-*.err"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for key, line in said.items():
                counts[key] += text.count(line)
            if stalled and path.name.endswith(f"-{stalled.group(1)}.err"):
                counts["stalled_actor_last_lines"] = [x[:300] for x in text.strip().splitlines()[-3:]]
        return counts

    # -- the report --
    def report(self) -> dict:
        a, t = self.args, self.targets
        stats_path = self.chaos / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        final = self.drivers[-1] if self.drivers and self.drivers[-1]["role"].startswith("chaos") else \
            next((d for d in reversed(self.drivers) if d["role"].startswith("chaos")), {})
        quarantined = quarantine(self.chaos)
        qset = {q["shard"]: q for q in quarantined}
        both = [s for s in self.shard_ids if s in markers(self.chaos) and s in self.reference.committed()]
        eq = compare(self.reference, self.chaos, both, (t.get("hang") or {}).get("text_id"))
        acct = accounting(self.chaos, self.inputs)
        lm_actors = [x for x in self.actors.values() if is_lm(x)]
        chaos_jobs = {x["job_id"] for x in self.actors.values()} - {x["job_id"] for x in self.clean_actors}
        restarts = {
            "ray_state": {
                "lm_actors_created": sum(1 for x in lm_actors if x["job_id"] in chaos_jobs),
                "lm_restarts": sum(x["num_restarts"] or 0 for x in lm_actors if x["job_id"] in chaos_jobs),
                "lm_processes_seen": sum(len(x["pids"]) for x in lm_actors if x["job_id"] in chaos_jobs),
                "all_stage_actor_restarts": sum(x["num_restarts"] or 0 for x in self.actors.values()
                                                if x["job_id"] in chaos_jobs),
                "deaths": sorted({x["death_cause"][:160] for x in self.actors.values()
                                  if x["job_id"] in chaos_jobs and x["state"] == "DEAD" and x["death_cause"]})[:8],
            },
            "final_driver_stats_json": {"engine_starts": (stats.get("actors") or {}).get("engine_starts"),
                                        "lm_actors": len((stats.get("actors") or {}).get("lm_actors") or [])},
            "uninterrupted_run_engine_starts": (self.clean_stats.get("actors") or {}).get("engine_starts"),
            "telemetry_engine_starts": {"uninterrupted": self.engine_starts(self.clean_sinks),
                                        "soak_all_drivers": self.engine_starts(set(self.sinks) - self.clean_sinks)},
        }
        second = getattr(self, "second_rec", None)
        holder = self.chaos_drivers[0].proc.pid
        timeouts = funnel_timeouts(stats)
        checks: dict[str, bool] = {
            "run_finished": final.get("rc") == 0 and (stats.get("shards") or {}).get("pending", 1) == 0
            and (stats.get("shards") or {}).get("done", 0) + (stats.get("shards") or {}).get("quarantined", 0)
            == len(self.shard_ids),
            "documents_lost_zero": acct["lost"] == 0 and not acct["shards_unaccounted"],
            "outputs_equal": eq["annotations_equal"] and eq["texts_equal"],
            "every_fault_fired": not self.unfired and all(e.get("fired", True) for e in self.events),
        }
        expected_q = {k: t.get(k) for k in ("poison", "corrupt") if t.get(k)}
        checks["only_poison_and_corrupt_quarantined"] = set(qset) == set(expected_q.values())
        if t.get("poison"):
            checks["poison_quarantined_actor_died"] = bool(re.search(
                r"died|dead|exit|137|sigkill|killed", (qset.get(t["poison"]) or {}).get("cause", ""), re.I))
        if t.get("corrupt"):
            checks["corrupt_quarantined_checksum"] = "checksum" in (qset.get(t["corrupt"]) or {}).get("cause", "")
        if "second_driver" in self.faults:
            checks["second_driver_refused"] = bool(second) and second["rc"] not in (0, None) and \
                str(holder) in "\n".join(second["last_lines"])
        if t.get("hang"):
            hung = eq.get("hung_row") or {}
            checks["hang_counted_as_tool_timeout"] = sum(v for f in timeouts.values() for v in f.values()) >= 1 \
                and hung.get("calls_timed_out", 0) >= 1
        if "driver_kill" in self.faults:
            resub = [d for d in self.drivers if d["role"] == "chaos-2-resubmitted"]
            checks["resubmitted_driver_took_over"] = bool(resub) and resub[0]["rc"] == 0
        if "node_remove" in self.faults:
            checks["node_removed_with_an_lm_actor"] = any(
                e["fault"] == "node_remove" and e.get("lm_actors_on_node", 0) >= 1 for e in self.events)
        logs = self.actor_logs()
        if t.get("stall"):
            checks["stall_ended_by_watchdog_and_committed"] = self.stall_flag.exists() and \
                logs["watchdog_endings"] >= 1 and t["stall"] in markers(self.chaos)
        if t.get("no_eligible"):
            checks["no_eligible_shards_committed"] = all(
                s in markers(self.chaos) and all(r["status"] == "heuristic_rejected" for r in rows(self.chaos, s))
                for s in t["no_eligible"])
        if "malformed" in self.faults:
            checks["malformed_input_skipped_at_prepare"] = acct["skipped_at_prepare_by_reason"].get("malformed_json", 0) >= 1
        clean_s = self.clean_record["seconds"]
        result = {
            "benchmark": "soak",
            "command": "python -m jobs.bench soak " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["soak"] else []),
            "cluster": {"nodes": 3, "cpus_per_node": 1, "lm_slots_per_worker": 1, "lm_actors": a.lm_actors,
                        "lm_num_cpus": LM_CPUS, "listeners": "127.0.0.1 only", "nodes_added_later": sum(
                            e["fault"] == "node_add" for e in self.events)},
            "settings": {"max_failures": a.max_failures, "batch_attempts": a.batch_attempts,
                         "tool_timeout_s": 2, "lm_batch_timeout_s": a.lm_batch_timeout_s, "lease_ttl_s": 30,
                         "lease_heartbeat_s": 2},
            "prepare_s": self.prepare_record["seconds"], "prepare_runner": self.args.prepare_runner,
            "model": self.model,
            "inputs": {Path(k).name: v for k, v in self.inputs.items()},
            "shards": len(self.shard_ids), "texts": sum(s["n_texts"] for s in self.manifest["shards"]),
            "targets": t,
            "faults": self.events,
            "faults_injected": sorted({e["fault"] for e in self.events if e.get("fired", True)} - {"cluster"}),
            "drivers": self.drivers,
            "actor_restarts": restarts,
            "documents": acct,
            "quarantined": quarantined,
            "equality": eq,
            "funnel_timeouts": timeouts,
            "actor_logs": logs,
            "final_stats": {k: stats.get(k) for k in ("shards", "passes", "seconds", "docs", "texts")},
            "wall": {"uninterrupted_run": self.args.reference, "uninterrupted_s": clean_s,
                     "soak_s": round(self.chaos_seconds, 1),
                     "slowdown": round(self.chaos_seconds / clean_s, 2) if clean_s else None,
                     "total_s": round(time.perf_counter() - self.t0, 1),
                     # CPU-seconds of everything the run started (drivers, Ray daemons and workers, engines)
                     "uninterrupted_cpu_s": round(self.clean_cpu, 1), "soak_cpu_s": round(self.chaos_cpu, 1),
                     "cpu_ratio": round(self.chaos_cpu / self.clean_cpu, 2) if self.clean_cpu else None,
                     # the machine is shared: other work's load stretches every figure here alike
                     "cpus": len(os.sched_getaffinity(0)), "load_avg_1min_at_start": self.load_start,
                     "load_avg_1min_at_end": round(os.getloadavg()[0], 1)},
            "checks": checks,
            "ok": all(checks.values()),
        }
        return result

    def run(self) -> dict:
        try:
            self.setup()
            self.clean_run()
            self.clean_actors = list(self.actors.values())
            self.clean_sinks = set(self.sinks)
            self.chaos_run()
            return self.report()
        finally:
            self.cpu.stop()
            if self.cluster is not None:
                self.cluster.shutdown()
            for _ in range(3):  # a process shutting down may still write a file there
                shutil.rmtree(self.ray_tmp, ignore_errors=True)
                time.sleep(1)
            if not self.args.keep and not self.args.work_dir:
                shutil.rmtree(self.work, ignore_errors=True)


def run(args) -> dict:
    result = Soak(args).run()
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def add_arguments(p) -> None:
    p.add_argument("--shards", type=int, default=200, help="documents of C4 web text, one shard each")
    p.add_argument("--lm-actors", type=int, default=2)
    p.add_argument("--faults", default="all", help=f"all, or a comma list of: {', '.join(FAULTS)}")
    p.add_argument("--max-failures", type=int, default=2, help="shards.max_failures of the soak run")
    p.add_argument("--batch-attempts", type=int, default=2, help="ray.batch_attempts of the soak run")
    p.add_argument("--lm-batch-timeout-s", type=float, default=45.0)
    p.add_argument("--poison-at", type=float, default=0.8,
                   help="where the poison shard sits in the manifest (0..1); after the driver kill, the attempts "
                        "the killed driver made on it are never recorded (failures are charged at a pass's end)")
    p.add_argument("--at-actor-kill", type=float, default=0.15, help="fraction of shards committed when it fires")
    p.add_argument("--at-node-remove", type=float, default=0.3)
    p.add_argument("--at-node-add", type=float, default=0.4)
    p.add_argument("--at-driver-kill", type=float, default=0.55)
    p.add_argument("--reference", choices=("ray", "local"), default="ray",
                   help="the uninterrupted run: the Ray job on the same prepared shards and cluster (its wall time is "
                        "the slowdown's base), or the single-process pipeline on the same inputs (cheaper: one "
                        "engine, no Ray; the Ray job equals it row for row, tests/test_ray_job.py)")
    p.add_argument("--prepare-runner", choices=("ray", "local"), default="ray",
                   help="jobs.prepare as a Ray job on the soak's cluster, or in one loop (tiny corpora; same shards)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run before its driver is killed")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the work dir (a temp dir otherwise removed)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "soak.json"),
                   help="where the JSON is written too ('' for nowhere)")
    p.add_argument("overrides", nargs="*", help="config overrides for every job of the soak")
