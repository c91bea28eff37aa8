"""The soak's JSON: what ran, what each fault did, and checks that each cite their evidence."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from benchmarks.soak.evidence import Checks, line, record
from benchmarks.soak.outputs import accounting, compare, failures, funnel_timeouts, markers, quarantine, rows

QDIR = ("quarantine", "annotate")
PROOF = {"driver_kill": "resubmitted_driver", "actor_kill": "killed_actor", "node_remove": "node_removed"}


def _actor_logs(soak) -> dict:
    """Lines the stage actors wrote as they were ended, from every node's Ray session logs (a dead worker's files
    move to logs/old/)."""
    poison = (soak.targets or {}).get("poison")
    said = {"watchdog": "watchdog: the lm batch ran over",
            "poison": f"fault injection: a poison batch (['{poison}'])" if poison else "fault injection: a poison",
            "gil": "fault injection: a Calculator call computes"}
    found: dict = {k: [] for k in said}
    for path in soak.ray_tmp.glob("ray/session_*/logs/**/worker-*.err"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for key, needle in said.items():
            hit = line(text, re.escape(needle))
            if hit:
                found[key].append(f"{path.name}: {hit}")
    return found


def main_checks(soak, c: Checks) -> dict:
    run, t, a = soak.chaos.run, soak.targets, soak.args
    stats_path = run / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    final = soak.chaos.driver.record()
    soak.drivers.append(final)
    qset = {q["shard"]: q for q in quarantine(run)}
    both = [s for s in soak.shard_ids if s in markers(run) and s in soak.reference.committed()]
    ended = {k: (t.get(k) or {}).get("text_id") for k in ("hang", "gil")}
    eq = compare(soak.reference, run, both, ended)
    acct = accounting(run, soak.inputs)
    logs = _actor_logs(soak)
    steps = {s["fault"]: s for s in soak.chaos_result["steps"]}
    shards = stats.get("shards") or {}
    c.add("run_finished", {"final_driver_rc": final["rc"], "stats_shards": shards},
          # a run that ends with quarantined shards (the poison and corrupt ones) exits 3, saying so last
          lambda e: e["final_driver_rc"] == (3 if e["stats_shards"]["quarantined"] else 0)
          and e["stats_shards"]["pending"] == 0
          and e["stats_shards"]["done"] + e["stats_shards"]["quarantined"] == len(soak.shard_ids))
    c.add("documents_lost_zero", {"accounting": acct}, lambda e: e["accounting"]["lost"] == 0
          and not e["accounting"]["shards_unaccounted"])
    c.add("outputs_equal_to_uninterrupted", {"equality": eq}, lambda e: e["equality"]["annotations_equal"]
          and e["equality"]["texts_equal"] and e["equality"]["shards_compared"] >= 0.5 * len(soak.shard_ids))
    expected_q = sorted(v for k, v in t.items() if k in ("poison", "corrupt") and v)
    c.add("only_poison_and_corrupt_quarantined", {"quarantined": sorted(qset), "expected": expected_q or None},
          lambda e: e["quarantined"] == e["expected"])
    for name in ("second_driver", "actor_kill", "node_remove", "node_add", "driver_kill"):
        if name in soak.faults:
            c.add(f"{name}_fired_and_settled", {"step": steps.get(name)},
                  lambda e: e["step"]["fired"] and e["step"]["settled"])
    if t.get("poison"):
        q = record(run.joinpath(*QDIR, f"{t['poison']}.json"))
        proof = {"quarantine": q, "actor_log": logs["poison"][:1] or None}
        if a.max_failures > 1:  # charged in a fresh pass, then retried with the others in the retry pass
            logs_text = "\n".join(d.text() for d in soak.chaos.drivers)
            proof["retried_together"] = line(logs_text, rf"retrying \d+ shards together.*{t['poison']}")
        c.add("poison_quarantined_with_its_cause", proof,
            lambda e: e["quarantine"]["attempts"] == a.max_failures and e["quarantine"]["error"].startswith("ActorDied")
            and "worker exit type" in e["quarantine"]["error"])
    if t.get("corrupt"):
        c.add("corrupt_quarantined_at_once", {"quarantine": record(run.joinpath(*QDIR, f"{t['corrupt']}.json"))},
              lambda e: "checksum" in e["quarantine"]["error"] and e["quarantine"]["attempts"] == 1)
    if t.get("stall"):
        c.add("stall_ended_by_the_watchdog_and_committed", {
            "fired": soak.chaos.stall_flag.read_text().strip() if soak.chaos.stall_flag.exists() else None,
            "watchdog_line": logs["watchdog"][:1] or None,
            "marker": record(run / "markers" / "annotate" / f"{t['stall']}.json")},
            # its own evidence: the flag the stalled batch set, the watchdog ending an LM batch, the shard committed
            lambda e: "stalled in stage" in e["fired"] and "ray.lm_batch_timeout_s" in e["watchdog_line"][0]
            and e["marker"]["shard_id"] == t["stall"])
    for fault in ("hang", "gil"):
        if t.get(fault):
            row = eq["ended_rows"].get(fault)
            proof = {"row": row, "funnel": funnel_timeouts(stats)}
            if fault == "gil":  # the worker really computed in C: its own line before it was ended
                proof["worker_log"] = logs["gil"][:1] or None
            c.add(f"{fault}_calls_ended_by_their_timeout", proof,
                  lambda e: e["row"]["calls_ended"] == e["row"]["calls_in_uninterrupted_run"] >= 1
                  and e["row"]["same_calls"])
    if "second_driver" in soak.faults and soak.chaos.second is not None:
        sec = soak.chaos.second
        holder = soak.chaos.drivers[0].proc.pid
        c.add("second_driver_refused_naming_the_holder", {
            "rc": sec.proc.returncode, "line": line(sec.text(), "being written by another driver")},
            lambda e: e["rc"] not in (0, None) and f"pid {holder}" in e["line"])
        soak.drivers.append(sec.record())
    if "actor_kill" in soak.faults and steps.get("actor_kill"):
        s = steps["actor_kill"]
        now = soak.actors.get(s.get("actor_id"), {})
        c.add("killed_actor_restarted_by_ray", {"killed": s.get("pid"), "ray_state_after": now or None},
              lambda e: (e["ray_state_after"]["num_restarts"] or 0) > (s.get("restarts_before") or 0))
    if "node_remove" in soak.faults and steps.get("node_remove"):
        s = steps["node_remove"]
        node = s.get("node_id")
        # its own evidence: the node held LM actors, Ray saw them die with it, and the run's ledger charged the
        # deaths to that node (not to a shard)
        ledger = (stats.get("nodes") or {}).get(node) if node else None
        c.add("node_removed_with_an_lm_actor", {"lm_actors_on_node": s.get("lm_actors_on_node"), "ledger": ledger},
              lambda e: any(k.startswith("node_") for k in e["ledger"]["by_cause"])
              and not e["ledger"]["charged_to"].get("shard"))
    if "driver_kill" in soak.faults:
        resub = next((d for d in soak.chaos.drivers if d.role == "chaos-2-resubmitted"), None)
        c.add("resubmitted_driver_took_the_lease_over", {
            "line": line(resub.text(), "taking over the run's lease") if resub else None},
            lambda e: "no longer running" in e["line"])
    if t.get("no_eligible"):
        c.add("no_eligible_shards_committed", {"shards": {s: s in markers(run) for s in t["no_eligible"]}},
              lambda e: all(e["shards"].values()) and all(r["status"] == "heuristic_rejected" for s in t["no_eligible"]
                                                          for r in rows(run, s)))
    if "malformed" in soak.faults:
        c.add("malformed_input_skipped_at_prepare", {"by_reason": acct["skipped_at_prepare_by_reason"]},
              lambda e: e["by_reason"].get("malformed_json", 0) >= 1)
    return {"stats": {k: stats.get(k) for k in ("shards", "passes", "seconds", "docs", "texts", "pool_deaths",
                                                "pass_cuts", "charges_by_cause", "nodes")},
            "equality": eq, "documents": acct, "quarantined": list(qset.values()), "actor_logs": logs}


def scenario_checks(soak, c: Checks) -> dict:
    sc = soak.scenarios
    if "pool_dead" in sc:
        r = sc["pool_dead"]
        last = (r["first"].get("last_lines") or [""])[-1]
        c.add("pool_dead_heals_in_one_submission_and_exits_3", {
            "rc": r["first"]["rc"], "cut": line(r["log_first"], r"pass cut: pool_dead|pass ended with a dead pool"),
            "last_line": last, "seconds": r["seconds"]},
            lambda e: e["rc"] == 3 and "ray.lm" in e["cut"] and "4 of 6 shards quarantined" in e["last_line"])
        c.add("pool_dead_healthy_committed_poison_quarantined_after_retries_together", {
            "markers": r["markers_final"], "quarantined": r["quarantined"], "attempts": r["attempts_final"],
            "errors": r["errors"], "retried_together": line(r["log_first"], r"retrying \d+ shards together"),
            "lease_released": not r["lease_left"]},
            lambda e: e["markers"] == ["shard-00000", "shard-00005"] and e["quarantined"] == r["poison"]
            and all(n == soak.args.max_failures for n in e["attempts"].values())
            and all(v.startswith("ActorDied") for v in e["errors"].values()) and e["lease_released"])
    if "pause" in sc and sc["pause"].get("first"):
        r = sc["pause"]
        epochs = {m["epoch"] for m in r["markers"].values()}
        first_epoch = min(epochs) if epochs else None
        late = [s for s, m in r["markers"].items() if m["epoch"] == first_epoch and m["committed"] > r["second_started"]]
        c.add("pause_other_host_takes_over_after_the_ttl", {
            "rc": r["second"]["rc"], "line": line(r["log_second"], "taking over the run's lease")},
            lambda e: e["rc"] == 0 and "last renewed" in e["line"])
        c.add("pause_resumed_driver_stops_writing", {
            "rc": r["first"]["rc"], "line": line(r["log_first"], "stops writing|refused|another driver"),
            "resumed_while_second_held_the_run": r["resumed_while_second_held_the_run"],
            "first_ended_while_second_ran": r["first_ended_while_second_ran"]},
            lambda e: e["rc"] not in (0, None) and e["resumed_while_second_held_the_run"] is True
            and e["first_ended_while_second_ran"] is True)
        c.add("pause_nothing_committed_after_the_takeover_nor_twice", {
            "markers": len(r["markers"]), "epochs": sorted(e for e in epochs if e is not None),
            "first_driver_commits_after_takeover": late or ["none"]},
            lambda e: e["markers"] == r["shards"] and late == [] and len(e["epochs"]) == 2)
    if "charges_pending" in sc:
        r = sc["charges_pending"]
        written = r["charge_at_kill"] or r.get("ledger_at_kill")
        c.add("charges_pending_written_before_the_pass_ended", {
            "written_at_kill": written, "driver_alive_when_charged": r["alive_when_charged"],
            "pass_over_when_killed": r["pass_over_when_killed"]},
            lambda e: e["driver_alive_when_charged"] and not e["pass_over_when_killed"])
        # the second driver's deaths of the poison, in order: those of passes the killed driver did not run
        first_passes = {e.get("pass") for e in r.get("ledger_at_kill") or []}
        later = sorted((e for e in r.get("final_ledger") or [] if e.get("pass") not in first_passes),
                       key=lambda e: e.get("t", 0))
        c.add("charges_pending_survive_and_count", {
            "rc": r["second"]["rc"], "quarantined": r["quarantined"],
            "attempts": [{k: a.get(k) for k in ("at", "error")} for a in r["final_attempts"]],
            "second_drivers_first_death": {k: later[0].get(k) for k in ("at", "cause", "charged_to", "pass")} if later else None},
            # the killed driver's record counts: its charge is the first attempt, or its ledger event makes the second
            # driver's very first death the shard's (again in a later pass, or on a second node)
            lambda e: e["rc"] == 3 and e["quarantined"] == ["shard-00001"]
            and len(e["attempts"]) == soak.args.max_failures
            and (e["attempts"][0]["at"] <= r["killed_at"]
                 or (e["second_drivers_first_death"] or {}).get("charged_to") == "shard"))
    if "node_kill" in sc:
        for name, check in sc["node_kill"]["checks"].items():
            c.add(f"node_kill_{name}", {"check": check}, lambda e: e["check"]["ok"])
    return {name: {k: v for k, v in res.items() if not k.startswith("log_")} for name, res in sc.items()}


def report(soak) -> dict:
    c = Checks()
    main = main_checks(soak, c)
    scenarios = scenario_checks(soak, c)
    # A fault counts as fired when a check that rests on its own trace passed, not when it was armed.
    proof = {f: [n for n in c.items if n.startswith(f) or n.startswith(PROOF.get(f, "-"))] for f in sorted(soak.faults)}
    fired = sorted(f for f, names in proof.items() if names and all(c.items[n]["ok"] for n in names))
    c.add("every_fault_fired", {"asked": sorted(soak.faults), "fired": fired, "proof": proof},
          lambda e: e["asked"] == e["fired"])
    clean_s = soak.clean_record["seconds"]
    chaos_s = soak.chaos_result["seconds"]
    return {
        "benchmark": "soak",
        "command": "python -m jobs.bench soak " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["soak"] else []),
        "cluster": {"nodes": 3, "cpus_per_node": 1, "lm_slots_per_worker": 1, "lm_actors": soak.args.lm_actors,
                    "listeners": "127.0.0.1 only"},
        "settings": {"max_failures": soak.args.max_failures, "batch_attempts": soak.args.batch_attempts,
                     "tool_timeout_s": 2, "lm_batch_timeout_s": soak.args.lm_batch_timeout_s, "lease_ttl_s": 30},
        "model": soak.model, "inputs": {Path(k).name: v for k, v in soak.inputs.items()},
        "shards": len(soak.shard_ids), "targets": soak.targets, "faults": soak.events,
        "schedule": soak.chaos_result["steps"], "main": main, "scenarios": scenarios,
        "drivers": soak.drivers,
        "wall": {"uninterrupted_run": soak.args.reference, "uninterrupted_s": clean_s, "soak_s": round(chaos_s, 1),
                 "slowdown": round(chaos_s / clean_s, 2) if clean_s else None,
                 "total_s": round(time.perf_counter() - soak.t0, 1), "uninterrupted_cpu_s": round(soak.clean_cpu, 1),
                 "soak_cpu_s": round(soak.chaos_result["cpu_s"], 1),
                 "cpus": len(os.sched_getaffinity(0)), "load_avg_1min_at_start": soak.load_start,
                 "load_avg_1min_at_end": round(os.getloadavg()[0], 1)},
        "checks": c.as_dict(),
        "ok": c.ok(),
    }


__all__ = ["report", "failures"]
