"""What each defense costs benign users and takes from the attacker, swept over its strength.

Reverse sigmoid, Gaussian noise, rounding, top-k, label only and PRADA, each at a few
strengths, each served by the real service on loopback. For every setting: benign accuracy
through the defended API (the victim's test images from several benign clients, refused images
counted wrong) against the recovery of a KnockoffNets knockoff trained on what that API
answered (the same images, in the same order, for every setting). PRADA refuses a client once
its alarm is raised, so its knockoff trains on the answers obtained before the refusal. PRADA is
also run against three attackers (KnockoffNets, Copycat, Papernot's JBDA from
`attacker.attacks`), each from its own API keys, and against the benign clients: its detection
rate, the queries before detection, and its false alarms. A refused attacker could come back
under a new key; PRADA's per-client state does not see that (Juuti et al. say so too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from attacker.attacks import Target, make_attack
from attacker.client import FatalAPIError
from attacker.store import answer_count
from attacker.train import KnockoffOptions
from scenarios.experiments import scale
from scenarios.experiments.cache import artefact_key, cached_path, making
from scenarios.experiments.probes import benign_accuracy, benign_keys, benign_set, cached_benign
from scenarios.experiments.registry import Experiment, register
from scenarios.experiments.report import header, publish, pyplot, save_figure
from scenarios.experiments.steps import (
    SERVICE_READY_S,
    QuerySpec,
    VictimSpec,
    cached_transfer_set,
    cached_victim,
    knockoff_row,
)
from victim_service.launch import preloaded_service

Say = Callable[[str], object]


@dataclass(frozen=True)
class Setting:
    """One defended configuration of the service: a defense at one strength."""

    defense: str
    strength: float | None = None

    def env(self) -> dict[str, str]:
        s = self.strength
        return {
            "none": {},
            "reverse_sigmoid": {"VICTIM_REVERSE_SIGMOID_BETA": str(s)},
            "noise": {"VICTIM_NOISE_STD": str(s)},
            "rounding": {"VICTIM_ROUND_DECIMALS": str(s)},
            "top-k": {"VICTIM_OUTPUT": "topk", "VICTIM_TOP_K": str(s)},
            "label only": {"VICTIM_OUTPUT": "label"},
            "prada": {"VICTIM_PRADA_THRESHOLD": str(s), "VICTIM_PRADA_ACTION": "reject"},
        }[self.defense]

    @property
    def name(self) -> str:
        knob = {"reverse_sigmoid": "beta", "noise": "std", "rounding": "decimals",
                "top-k": "k", "prada": "delta"}.get(self.defense)  # fmt: skip
        return self.defense if knob is None else f"{self.defense} ({knob}={self.strength:g})"


def sweep(strengths: dict[str, tuple]) -> tuple[Setting, ...]:
    """No defense, then every defense at each of its strengths (label only has none)."""
    settings = [Setting("none")]
    for defense, values in strengths.items():
        settings += [Setting(defense, v) for v in values] if values else [Setting(defense)]
    return tuple(settings)


FULL_STRENGTHS = {
    "reverse_sigmoid": (0.3, 1.0),
    "noise": (0.1, 0.5),
    "rounding": (1, 0),
    "top-k": (3, 1),
    "label only": (),
    "prada": (0.9, 0.95),
}
"""Two strengths each: twelve settings of 5,000 queries keep the default scale near the hour."""

QUICK_STRENGTHS = {
    "reverse_sigmoid": (1.0,),
    "noise": (0.5,),
    "rounding": (1,),
    "top-k": (1,),
    "label only": (),
    "prada": (0.9,),
}


@dataclass(frozen=True)
class DefensesConfig:
    victim: VictimSpec = scale.VICTIM
    pool: str = scale.POOL
    pool_size: int | None = None
    budget: int = 5_000
    knockoff: KnockoffOptions = field(default_factory=scale.knockoff)
    settings: tuple[Setting, ...] = sweep(FULL_STRENGTHS)
    benign_images: int | None = 2_000
    """Test images the benign clients send (None: the whole test split)."""
    benign_clients: int = 10
    detection_clients: int = 2
    """Attacker clients of each kind against each PRADA setting (seeds 0, 1, ...)."""
    jbda_seed_per_class: int = 15
    jbda_rounds: int = 4
    jbda_round_epochs: int = 10
    seed: int = 0


FULL = DefensesConfig()
QUICK = DefensesConfig(
    victim=scale.QUICK_VICTIM,
    pool=scale.QUICK_POOL,
    pool_size=1_000,
    budget=600,
    knockoff=scale.quick_knockoff(),
    settings=sweep(QUICK_STRENGTHS),
    benign_images=None,
    benign_clients=3,
    detection_clients=1,
    jbda_seed_per_class=10,
    jbda_rounds=2,
    jbda_round_epochs=3,
)
"""Embedded data only (digits victim, natural pool): one strength per defense."""


def _options(config: DefensesConfig) -> KnockoffOptions:
    return replace(config.knockoff, seed=config.seed, progress=False)


def _benign(config: DefensesConfig, setting: Setting, say: Say) -> dict:
    """Benign accuracy through the service defended by `setting` (cached)."""
    return cached_benign(config.victim, setting.env(), config.benign_images,
                         config.benign_clients, config.seed, say)  # fmt: skip


def _attack(kind: str, config: DefensesConfig, seed: int):
    """One attacker of `kind` (knockoff, copycat, jbda) as configured, from `attacker.attacks`."""
    k = config.knockoff
    common = {"seed": seed, "arch": k.arch, "epochs": k.epochs, "batch_size": k.batch_size,
              "lr": k.lr}  # fmt: skip
    if kind == "jbda":
        return make_attack("jbda", {**common, "seed_dataset": config.victim.dataset,
                                    "seed_per_class": config.jbda_seed_per_class,
                                    "rounds": config.jbda_rounds,
                                    "round_epochs": config.jbda_round_epochs})  # fmt: skip
    return make_attack(kind, {**common, "budget": config.budget, "pool": config.pool,
                              "pool_size": config.pool_size})  # fmt: skip


def _stream(url: str, key: str, attack, db: Path) -> dict:
    """Run one attacker against a PRADA service until its budget or its first refusal.

    One request at a time: PRADA reads a client's queries as a sequence, so requests in flight
    together reach it in whichever order they arrive, and its verdict changed with that order
    (a Copycat client of the quick scale was caught after 456 answers in one run, never in the
    next, at 4 requests in flight)."""
    target = Target(url=url, db=db, api_key=key, concurrency=1, batch_size=8, progress=False)
    try:
        result = attack.query(target)
        refused = False
        budget = result.budget
    except FatalAPIError as exc:
        if exc.status != 403:
            raise
        refused, budget = True, None
    return {"refused": refused, "answered": answer_count(db), "budget": budget}


ATTACKERS = ("knockoff", "copycat", "jbda")
SEED_OFFSET = {"knockoff": 0, "copycat": 100, "jbda": 200}
"""Copycat asks natural images at random like KnockoffNets' random strategy: its clients use
other seeds so that their streams are not KnockoffNets' own."""


def _prada(config: DefensesConfig, setting: Setting, say: Say) -> dict:
    """One PRADA service: the sweep's KnockoffNets attacker (its transfer set is kept), the other
    attacker clients, then the benign clients, each with its own key (cached as a whole)."""
    spec = {"victim": artefact_key("victims", asdict(config.victim)), "env": setting.env(),
            "config": {k: v for k, v in asdict(config).items() if k != "settings"}}  # fmt: skip
    path = cached_path("prada", spec, ".result.json")
    with making(path):
        if path.exists():
            return json.loads(path.read_text())
        clients = [(kind, SEED_OFFSET[kind] + i) for kind in ATTACKERS
                   for i in range(config.detection_clients)]  # fmt: skip
        keys = {c: f"{c[0]}-{c[1]}" for c in clients}
        benign = benign_keys(config.benign_clients)
        env = {"VICTIM_CHECKPOINT": str(cached_victim(config.victim)), **setting.env(),
               "VICTIM_API_KEYS": ",".join([*keys.values(), *benign])}  # fmt: skip
        streams = {}
        with preloaded_service(env, ready_timeout=SERVICE_READY_S) as url:
            for kind, seed in clients:
                key = keys[(kind, seed)]
                db = path.with_name(f"{path.stem}-{key}.sqlite")
                for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                    stale.unlink(missing_ok=True)
                got = _stream(url, key, _attack(kind, config, seed), db)
                streams[key] = {"attack": kind, "seed": seed, "db": str(db), **got}
                verb = "refused after" if got["refused"] else "not caught in"
                say(f"  {setting.name}: {key} {verb} {got['answered']} answers")
            images, targets = benign_set(config.victim, config.benign_images, config.seed)
            benign_result = benign_accuracy(url, images, targets, benign)
        result = {"streams": streams, "benign": benign_result}
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _detection(threshold: float, prada: dict) -> dict:
    """Per attacker kind: how many of its clients were refused, after how many answers."""
    out: dict = {"threshold": threshold}
    for kind in ATTACKERS:
        streams = [s for s in prada["streams"].values() if s["attack"] == kind]
        caught = [s["answered"] for s in streams if s["refused"]]
        out[kind] = {
            "clients": len(streams),
            "detected": len(caught),
            "detection_rate": len(caught) / len(streams) if streams else None,
            "answers_before_refusal": caught,
            "queries_each": [s["answered"] for s in streams],
        }
    benign = prada["benign"]
    out["benign"] = {
        "clients": benign["clients"],
        "false_alarms": benign["clients_refused"],
        "false_alarm_rate": benign["clients_refused"] / benign["clients"],
        "refused_images": benign["refused"],
    }
    return out


def run(
    out: Path, quick: bool = False, say: Say = print, config: DefensesConfig | None = None
) -> dict:
    """Every setting of the sweep; writes out/results.json, results.md, results.png."""
    config = config or (QUICK if quick else FULL)
    start = time.perf_counter()
    options = _options(config)
    query = QuerySpec(config.pool, config.pool_size, config.budget, seed=config.seed)
    rows, detection = [], []
    for setting in config.settings:
        t = time.perf_counter()
        if setting.defense == "prada":
            prada = _prada(config, setting, say)
            attacker = prada["streams"][f"knockoff-{SEED_OFFSET['knockoff']}"]
            db, got = Path(attacker["db"]), attacker["answered"]
            benign = prada["benign"]
            detection.append(_detection(float(setting.strength or 0), prada))
            refused_after = got if attacker["refused"] else None
        else:
            db = cached_transfer_set(config.victim, setting.env(), query, say)
            got, refused_after = config.budget, None
            benign = _benign(config, setting, say)
        knock = knockoff_row(db, got, options, config.victim)
        rows.append({
            "setting": setting.name, "defense": setting.defense, "strength": setting.strength,
            "env": setting.env(), "benign_accuracy": benign["accuracy"],
            "benign_refused": benign["refused"], "queries": config.budget,
            "answered": got, "refused_after": refused_after,
            "knockoff_accuracy": knock["knockoff_accuracy"], "recovery": knock["recovery"],
            "agreement": knock["agreement"], "victim_accuracy": knock["victim_accuracy"],
            "seconds": time.perf_counter() - t,
        })  # fmt: skip
        say(f"  {setting.name}: benign accuracy {benign['accuracy']:.3f}, "
            f"recovery {knock['recovery']:.3f}")  # fmt: skip
    results = {
        **header("defenses", __doc__, quick=quick, seed=config.seed,
                 config=asdict(config), victim_checkpoint=cached_victim(config.victim),
                 victim_accuracy=rows[0]["victim_accuracy"]),
        "rows": rows,
        "prada_detection": detection,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    publish(results, out, markdown, plot)
    return results


# ------------------------------------------------------------------------------ report


def markdown(results: dict) -> str:
    lines = [
        f"# defenses{' (quick)' if results.get('quick') else ''}",
        "",
        results["description"],
        "",
        f"Victim accuracy {results['victim_accuracy']:.4f} "
        f"({results['config']['victim']['dataset']}); attacker pool "
        f"{results['config']['pool']}, {results['config']['budget']} queries; "
        f"seed {results['seed']}.",
        "",
        "| setting | benign accuracy | benign refused | answered | knockoff accuracy | recovery "
        "| agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['setting']} | {r['benign_accuracy']:.3f} | {r['benign_refused']:.3f} | "
            f"{r['answered']} | {r['knockoff_accuracy']:.3f} | {r['recovery']:.3f} | "
            f"{r['agreement']:.3f} |"
        )
    if results["prada_detection"]:
        lines += [
            "",
            "PRADA (action: refuse) against each attacker's clients and the benign clients:",
            "",
            "| delta | "
            + " | ".join(f"{k} detected (answers before)" for k in ATTACKERS)
            + " | benign false alarms (images refused) |",
            "|---|" + "---|" * (len(ATTACKERS) + 1),
        ]
        for d in results["prada_detection"]:
            cells = []
            for k in ATTACKERS:
                before = ", ".join(map(str, d[k]["answers_before_refusal"])) or "-"
                cells.append(f"{d[k]['detected']}/{d[k]['clients']} ({before})")
            b = d["benign"]
            cells.append(f"{b['false_alarms']}/{b['clients']} ({b['refused_images']:.3f})")
            lines.append(f"| {d['threshold']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    plt = pyplot()

    detection = results["prada_detection"]
    fig, axes = plt.subplots(1, 2 if detection else 1, figsize=(12 if detection else 7, 4.5))
    ax = axes[0] if detection else axes
    by_defense: dict[str, list[dict]] = {}
    for r in results["rows"]:
        by_defense.setdefault(r["defense"], []).append(r)
    for defense, rows in by_defense.items():
        x = [r["benign_accuracy"] for r in rows]
        y = [r["recovery"] for r in rows]
        style = "k*" if defense == "none" else "o-"
        ax.plot(x, y, style, label=defense, markersize=10 if defense == "none" else 6)
        for r in rows:
            if r["strength"] is not None:
                ax.annotate(f"{r['strength']:g}", (r["benign_accuracy"], r["recovery"]),
                            textcoords="offset points", xytext=(4, 3), fontsize=7)  # fmt: skip
    ax.set_xlabel("benign accuracy through the defended API")
    ax.set_ylabel("knockoff recovery (knockoff / victim accuracy)")
    ax.set_title(f"defenses at {results['config']['budget']} queries")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if detection:
        ax2 = axes[1]
        groups = [*ATTACKERS, "benign"]
        width = 0.8 / len(detection)
        for i, d in enumerate(detection):
            values = [d[k]["detection_rate"] for k in ATTACKERS] + [d["benign"]["false_alarm_rate"]]
            ax2.bar(np.arange(len(groups)) + i * width, values, width,
                    label=f"delta {d['threshold']:g}")  # fmt: skip
        ax2.set_xticks(np.arange(len(groups)) + width * (len(detection) - 1) / 2, groups)
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("clients refused (benign: false alarms)")
        ax2.set_title("PRADA: detection rate per attacker")
        ax2.legend(fontsize=8)
    return save_figure(fig, path)


register(
    Experiment(
        name="defenses",
        description="benign accuracy against knockoff recovery for each defense and strength; "
        "PRADA's detection",
        run=run,
        full=FULL,
        quick=QUICK,
        markdown=markdown,
        plot=plot,
        set_elsewhere={
            "knockoff.seed": "the knockoffs take the run's seed (set seed=...)",
        },
    )
)
