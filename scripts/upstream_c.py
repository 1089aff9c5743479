#!/usr/bin/env python3
"""pagebuddy's exact pool against upstream pKVM's page allocator, compiled in user space.

Upstream's arch/arm64/kvm/hyp/nvhe/page_alloc.c is compiled unchanged with `cc -O2` over the
shim headers in benches/upstream/include, linked with benches/upstream/harness.c (the floor
benchmark's profile mode, ported to C), and timed beside pagebuddy's floor benchmark
(benches/benches/floor.rs, `BENCH_FLOOR_PROFILE`) on the same workloads, seeds and operations:
2^18 pages of 4 KiB, hot pair, churn step, mixed step and init, each with zeroing off and on
(on free), pagebuddy with each link store, the C with a no-op lock and with an uncontended
ticket lock. Each figure is the median of 5 rounds, the C and pagebuddy runs alternating within
each round, every run pinned to one CPU (`taskset -c 0`). In the same rounds the harness's
`zeroing` workload times the zero-on churn step's floor: the step's `memset` of a random held
page alone, with no allocator call. See docs/upstream-c.md.

    python3 scripts/upstream_c.py                 # the table, and target/upstream/upstream.json
    PAGEBUDDY_KERNEL_SRC=~/linux python3 scripts/upstream_c.py --rounds 3

The kernel source (GPL-2.0) is never part of the repository: unless PAGEBUDDY_KERNEL_SRC names
a tree, `apt-get download linux-source-6.1` fetches Debian's package into a temporary
directory, and the few files needed are extracted into target/upstream/linux (kept there for
the next run). Needs the network for that first fetch only; CI does not run this.

Before timing, each workload's allocations are compared between the two (the generator's first
values, every pfn handed out hashed in order, and the first 1,000 after the workload's state is
built): a difference stops the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from misses import floor_executable  # scripts/misses.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "upstream"
SHIMS = ROOT / "benches" / "upstream" / "include"
HARNESS = ROOT / "benches" / "upstream" / "harness.c"
SCHEMA = "pagebuddy-upstream-c/1"
PACKAGE = "linux-source-6.1"
PAGE_ALLOC = "arch/arm64/kvm/hyp/nvhe/page_alloc.c"
HYP_INCLUDE = "arch/arm64/kvm/hyp/include"
# Everything the build reads from the kernel tree (the Makefile for the version only).
NEEDED = (
    PAGE_ALLOC,
    f"{HYP_INCLUDE}/nvhe/gfp.h",
    f"{HYP_INCLUDE}/nvhe/memory.h",
    "Makefile",
)
WORKLOADS = ("hot", "churn", "mixed", "init")
COLUMNS = {"hot": "hot pair", "churn": "churn step", "mixed": "mixed step", "init": "init"}
ZEROS = ("off", "on")
STORES = ("side-table", "intrusive")
LOCKS = ("none", "ticket")
# The targets (docs/upstream-c.md): every ratio below 1, the intrusive rows' below 0.9.
TARGET = {"side-table": 1.0, "intrusive": 0.9}
NS = re.compile(r"([0-9.]+) ns per operation")


def say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Runs `cmd`, stops the script with its output if it fails."""
    p = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if p.returncode != 0:
        raise SystemExit(
            f"upstream_c: {shlex.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}"
        )
    return p


def kernel_version(tree: Path) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION] from the tree's top Makefile."""
    fields = {}
    for line in (tree / "Makefile").read_text(errors="replace").splitlines()[:12]:
        m = re.match(r"(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line)
        if m:
            fields[m.group(1)] = m.group(2)
    v = ".".join(fields.get(k, "?") for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL"))
    return v + fields.get("EXTRAVERSION", "")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_source(package: str) -> tuple[Path, dict[str, Any]]:
    """The kernel tree to build from and what it is: PAGEBUDDY_KERNEL_SRC, or the files
    needed, extracted from Debian's `package` into target/upstream/linux (cached)."""
    given = os.environ.get("PAGEBUDDY_KERNEL_SRC")
    if given:
        tree = Path(given).expanduser().resolve()
        missing = [f for f in NEEDED if not (tree / f).is_file()]
        if missing:
            raise SystemExit(f"upstream_c: PAGEBUDDY_KERNEL_SRC={tree} lacks {missing}")
        origin = {"from": "PAGEBUDDY_KERNEL_SRC", "path": str(tree)}
    else:
        tree = OUT / "linux"
        stamp = OUT / "source.json"
        cached = json.loads(stamp.read_text()) if stamp.is_file() else {}
        if cached.get("package") != package or any(not (tree / f).is_file() for f in NEEDED):
            cached = extract_package(package, tree)
            stamp.write_text(json.dumps(cached, indent=2) + "\n")
        else:
            say(f"upstream_c: kernel files from {stamp} ({cached.get('deb')})")
        origin = {"from": "debian-package", **cached}
    info = {
        **origin,
        "kernel_version": kernel_version(tree),
        "page_alloc_sha256": sha256(tree / PAGE_ALLOC),
        "files": list(NEEDED),
    }
    return tree, info


def extract_package(package: str, tree: Path) -> dict[str, Any]:
    """`apt-get download package` in a temporary directory, then NEEDED from the tarball in
    it into `tree`."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise SystemExit(
            "upstream_c: no apt-get/dpkg-deb here: set PAGEBUDDY_KERNEL_SRC to a kernel tree"
        )
    with tempfile.TemporaryDirectory(prefix="pagebuddy-upstream-") as tmp:
        t = Path(tmp)
        say(f"upstream_c: apt-get download {package}")
        run(["apt-get", "download", package], cwd=t)
        debs = sorted(t.glob("*.deb"))
        if not debs:
            raise SystemExit(f"upstream_c: apt-get download {package} left no .deb")
        deb = debs[0]
        version = run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
        say(f"upstream_c: unpacking {deb.name}")
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        run(
            [
                *("tar", "-x", "-C", tmp, "--wildcards", "--no-wildcards-match-slash"),
                "./usr/src/linux-source-*.tar.xz",
            ],
            stdin=fsys.stdout,
        )
        if fsys.wait() != 0:
            raise SystemExit(f"upstream_c: dpkg-deb --fsys-tarfile {deb.name} failed")
        tarballs = sorted((t / "usr" / "src").glob("linux-source-*.tar.xz"))
        if not tarballs:
            raise SystemExit(f"upstream_c: no linux-source tarball in {deb.name}")
        src = t / "src"
        src.mkdir()
        say(f"upstream_c: extracting {len(NEEDED)} files from {tarballs[0].name}")
        run(
            [
                *("tar", "-xJf", str(tarballs[0]), "-C", str(src)),
                *("--wildcards", "--no-wildcards-match-slash"),
                *(f"*/{f}" for f in NEEDED),
            ]
        )
        tops = [d for d in src.iterdir() if d.is_dir()]
        if len(tops) != 1:
            raise SystemExit(f"upstream_c: unexpected layout in {tarballs[0].name}: {tops}")
        if tree.exists():
            shutil.rmtree(tree)
        for f in NEEDED:
            (tree / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tops[0] / f, tree / f)
        return {
            "package": package,
            "package_version": version,
            "deb": deb.name,
            "deb_sha256": sha256(deb),
            "tarball": tarballs[0].name,
            "fetched_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        }


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)]


def build_c(tree: Path, cflags: list[str], cpu: int) -> tuple[dict[str, Path], dict[str, Any]]:
    """The harness, four objects of page_alloc.c (zero off/on x no-op/ticket lock) and the four
    programs, in target/upstream/build. Returns them by variant `<zero>-<lock>`."""
    build = OUT / "build"
    build.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    inc = ["-I", str(SHIMS), "-I", str(tree / HYP_INCLUDE)]
    commands = []

    def cc_run(args: list[str]) -> None:
        cmd = [cc, *args]
        commands.append(shlex.join(cmd))
        run([*pinned(cpu), *cmd])

    harness = build / "harness.o"
    cc_run([*cflags, "-std=gnu11", "-Wall", *inc, "-c", str(HARNESS), "-o", str(harness)])
    exes = {}
    for zero in ZEROS:
        for lock in LOCKS:
            v = f"{zero}-{lock}"
            defs = ["-DPAGEBUDDY_SHIM_ZERO_OFF"] if zero == "off" else []
            defs += ["-DPAGEBUDDY_SHIM_TICKET_LOCK"] if lock == "ticket" else []
            obj = build / f"page_alloc-{v}.o"
            cc_run(
                [*cflags, "-std=gnu11", *defs, *inc, "-c", str(tree / PAGE_ALLOC), "-o", str(obj)]
            )
            exe = build / f"upstream-{v}"
            cc_run([*cflags, str(harness), str(obj), "-o", str(exe)])
            exes[v] = exe
            # The zero-off shim must take out the freed block's memset and nothing else that
            # calls the C library: the zero-on object calls memset, the zero-off one does not.
            if shutil.which("nm"):
                undef = run(["nm", "-u", str(obj)]).stdout
                if ("memset" in undef) != (zero == "on"):
                    raise SystemExit(f"upstream_c: {obj.name}: memset where not expected:\n{undef}")
    version = run([cc, "--version"]).stdout.splitlines()[0]
    return exes, {"cc": cc, "cc_version": version, "cflags": cflags, "commands": commands}


def build_rust(cpu: int) -> Path:
    """The floor benchmark's binary, built with the bench profile."""
    say("upstream_c: cargo bench -p pagebuddy-benches --bench floor --no-run")
    p = run(
        [
            *pinned(cpu),
            *("cargo", "bench", "-p", "pagebuddy-benches", "--bench", "floor"),
            *("--no-run", "--message-format=json"),
        ],
        cwd=ROOT,
    )
    exe = floor_executable(p.stdout)
    if exe is None:
        raise SystemExit("upstream_c: no floor benchmark binary")
    return Path(exe)


def rust_cmd(
    exe: Path, workload: str, store: str, shift: int, ops: int, zero: str
) -> tuple[list[str], dict[str, str]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BENCH_FLOOR_") and k != "BENCH_SHORT"
    }
    env.update(
        BENCH_FLOOR_PROFILE=f"{workload}/{store}/{shift}:{ops}",
        BENCH_FLOOR_ZERO="on-free" if zero == "on" else "never",
        BENCH_FLOOR_PREFAULT="1",
    )
    # The C harness reads UPSTREAM_HUGE (set by --huge); the floor benchmark its own name for it.
    if os.environ.get("UPSTREAM_HUGE") == "1":
        env["BENCH_FLOOR_HUGE"] = "1"
    return [str(exe)], env


def check_pfns(rust: Path, c: dict[str, Path], shift: int, cpu: int) -> list[dict[str, Any]]:
    """Each workload's trace from the C and from pagebuddy: the same text, or the run stops."""
    limit, ops = 1000, 20000
    results = []
    cases = [(w, s, "off", "off-none") for w in ("hot", "churn", "mixed") for s in STORES]
    # Zeroing and the lock change no page handed out: one case each way to show it.
    cases += [("churn", "intrusive", "on", "on-ticket"), ("mixed", "side-table", "on", "on-none")]
    for workload, store, zero, variant in cases:
        cmd, env = rust_cmd(rust, workload, store, shift, ops, zero)
        env["BENCH_FLOOR_TRACE"] = str(limit)
        r = run([*pinned(cpu), *cmd], env=env).stdout
        cc = run([*pinned(cpu), str(c[variant]), workload, str(shift), str(ops), str(limit)]).stdout
        same = r == cc
        head = next((ln for ln in r.splitlines() if ln.startswith(f"trace {workload}:")), "")
        first = next((ln for ln in r.splitlines() if ln.startswith("trace first:")), "")
        say(
            f"upstream_c: check {workload}/{store}/zero {zero} vs upstream-{variant}: "
            f"{'same' if same else 'DIFFERENT'}; {head}"
        )
        results.append(
            {
                "workload": workload,
                "store": store,
                "zero": zero,
                "c_variant": variant,
                "ops": ops,
                "same": same,
                "summary": head,
                "first_pfns": [int(x) for x in first.split()[2:12]],
            }
        )
        if not same:
            rl, cl = r.splitlines(), cc.splitlines()
            for i, (a, b) in enumerate(zip(rl, cl, strict=False)):
                if a != b:
                    raise SystemExit(
                        f"upstream_c: pagebuddy and upstream differ on {workload}/{store} at "
                        f"output line {i}:\n  pagebuddy: {a[:300]}\n  upstream:  {b[:300]}"
                    )
            raise SystemExit(f"upstream_c: outputs differ in length: {len(rl)} vs {len(cl)}")
    return results


def time_one(cmd: list[str], env: dict[str, str] | None, cpu: int) -> float:
    p = run([*pinned(cpu), *cmd], env=env, timeout=300)
    m = NS.search(p.stderr)
    if not m:
        raise SystemExit(f"upstream_c: no time in the output of {shlex.join(cmd)}:\n{p.stderr}")
    return float(m.group(1))


def fmt_ns(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} ms"
    if x >= 1e4:
        return f"{x / 1e3:.1f} µs"
    return f"{x:.1f} ns"


def grid(cell: Callable[[str, str, str], str]) -> list[str]:
    """The table's rows (zero x store) and columns (workloads), `cell(zero, store, workload)`
    in each."""
    lines = [
        "| zero | store | " + " | ".join(COLUMNS[w] for w in WORKLOADS) + " |",
        "| --- | --- |" + " --- |" * len(WORKLOADS),
    ]
    for zero in ZEROS:
        for store in STORES:
            cells = [cell(zero, store, w) for w in WORKLOADS]
            zname = "off" if zero == "off" else "on (free)"
            sname = "side table" if store == "side-table" else "intrusive"
            lines.append(f"| {zname} | {sname} | " + " | ".join(cells) + " |")
    return lines


def ratio_text(ratio: float, store: str) -> str:
    """A ratio as the tables print it, with * where it misses the store's target."""
    miss = " *" if ratio >= TARGET[store] else ""
    return (f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}") + f"x{miss}"


def table(medians: dict[str, float], lock: str) -> list[str]:
    """The table against the C with `lock`: pagebuddy / C = ratio in each cell."""

    def cell(zero: str, store: str, w: str) -> str:
        pb = medians[f"{zero}/{w}/pagebuddy-{store}"]
        c = medians[f"{zero}/{w}/c-{lock}"]
        return f"{fmt_ns(pb)} / {fmt_ns(c)} = {ratio_text(pb / c, store)}"

    return grid(cell)


def paired(samples: dict[str, list[float]], lock: str) -> dict[str, float]:
    """Each cell's median over the rounds of pagebuddy's time over the C's of the same round.
    The two ran a few seconds apart, so a drift of the machine over the rounds moves both."""
    return {
        f"{zero}/{store}/{w}": statistics.median(
            pb / c
            for pb, c in zip(
                samples[f"{zero}/{w}/pagebuddy-{store}"],
                samples[f"{zero}/{w}/c-{lock}"],
                strict=True,
            )
        )
        for zero in ZEROS
        for store in STORES
        for w in WORKLOADS
    }


def paired_table(ratios: dict[str, float]) -> list[str]:
    """`paired`'s ratios as the table."""
    return grid(lambda zero, store, w: ratio_text(ratios[f"{zero}/{store}/{w}"], store))


def spread(samples: dict[str, list[float]]) -> list[str]:
    """The least and the most of each figure's rounds."""
    runners = ("c-none", "c-ticket", "pagebuddy-side-table", "pagebuddy-intrusive")
    lines = [
        "| zero | workload | C, no-op lock | C, ticket lock | pagebuddy, side table "
        "| pagebuddy, intrusive |",
        "| --- | --- |" + " --- |" * len(runners),
    ]
    for zero in ZEROS:
        for w in WORKLOADS:
            cells = []
            for name in runners:
                xs = samples[f"{zero}/{w}/{name}"]
                cells.append(f"{fmt_ns(min(xs))} to {fmt_ns(max(xs))}")
            lines.append(f"| {zero} | {COLUMNS[w]} | " + " | ".join(cells) + " |")
    return lines


def zeroing_floor(medians: dict[str, float], samples: dict[str, list[float]]) -> list[str]:
    """The zero-on churn step beside its floor: the same step's `memset` of a random held page
    alone, timed in the same rounds (the harness's `zeroing` workload)."""
    floor = medians["on/churn/c-zeroing"]
    xs = samples["on/churn/c-zeroing"]
    c = medians["on/churn/c-none"]
    lines = [
        "the zero-on churn step's floor, its memset of a random held page alone (the C "
        f"library's, no allocator call): {fmt_ns(floor)} ({fmt_ns(min(xs))} to "
        f"{fmt_ns(max(xs))}), {floor / c:.2f}x the C's step ({fmt_ns(c)}); 0.9x the C's step "
        f"is {fmt_ns(0.9 * c)}, {'below' if 0.9 * c < floor else 'above'} the floor",
    ]
    for store in STORES:
        pb = medians[f"on/churn/pagebuddy-{store}"]
        sname = "side table" if store == "side-table" else "intrusive"
        lines.append(f"- {sname}: {fmt_ns(pb)}, {pb / floor:.2f}x the floor")
    return lines


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], text=True, capture_output=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git(*args: str) -> str:
    p = subprocess.run(["git", *args], cwd=ROOT, text=True, capture_output=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (median; default 5)")
    ap.add_argument("--ops", type=int, default=200_000, help="steps per run of hot/churn/mixed")
    ap.add_argument(
        "--init-ops",
        type=int,
        nargs=2,
        default=(50, 10),
        metavar=("OFF", "ON"),
        help="pool builds per run of init, zero off and zero on (default 50 10)",
    )
    ap.add_argument("--shift", type=int, default=18, help="log2 pages (default 18)")
    ap.add_argument("--cpu", type=int, default=0, help="the CPU every run is pinned to")
    ap.add_argument("--cflags", default="-O2", help="flags for cc (default -O2)")
    ap.add_argument("--package", default=PACKAGE, help=f"Debian package (default {PACKAGE})")
    ap.add_argument(
        "--huge",
        action="store_true",
        help="advise every mapping of both sides (arena, metadata, links) for huge pages "
        "(MADV_HUGEPAGE, 2 MiB aligned), as a hypervisor maps its memory with block mappings",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="the JSON written (default target/upstream/upstream.json, or upstream-huge.json "
        "with --huge)",
    )
    args = ap.parse_args()
    # Both sides read it from the environment: the C harness as is, pagebuddy via rust_cmd.
    if args.out is None:
        args.out = OUT / ("upstream-huge.json" if args.huge else "upstream.json")
    if args.huge:
        os.environ["UPSTREAM_HUGE"] = "1"
    else:
        os.environ.pop("UPSTREAM_HUGE", None)
    wall = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    OUT.mkdir(parents=True, exist_ok=True)

    tree, source = fetch_source(args.package)
    digest = source["page_alloc_sha256"][:16]
    say(f"upstream_c: Linux {source['kernel_version']}, {PAGE_ALLOC} sha256 {digest}...")
    c, build = build_c(tree, shlex.split(args.cflags), args.cpu)
    rust = build_rust(args.cpu)
    checks = check_pfns(rust, c, args.shift, args.cpu)

    samples: dict[str, list[float]] = {}
    for r in range(args.rounds):
        t0 = time.monotonic()
        for zero in ZEROS:
            for w in WORKLOADS:
                ops = args.init_ops[ZEROS.index(zero)] if w == "init" else args.ops
                runners = [
                    ("c-none", [str(c[f"{zero}-none"]), w, str(args.shift), str(ops)], None),
                    (
                        "pagebuddy-side-table",
                        *rust_cmd(rust, w, "side-table", args.shift, ops, zero),
                    ),
                    ("c-ticket", [str(c[f"{zero}-ticket"]), w, str(args.shift), str(ops)], None),
                    ("pagebuddy-intrusive", *rust_cmd(rust, w, "intrusive", args.shift, ops, zero)),
                ]
                if zero == "on" and w == "churn":
                    # The churn step's zeroing alone, with the C library's memset: its floor.
                    runners.insert(
                        2,
                        (
                            "c-zeroing",
                            [str(c["on-none"]), "zeroing", str(args.shift), str(ops)],
                            None,
                        ),
                    )
                # The C and pagebuddy alternate; odd rounds go the other way round.
                for name, cmd, env in runners if r % 2 == 0 else runners[::-1]:
                    samples.setdefault(f"{zero}/{w}/{name}", []).append(
                        time_one(cmd, env, args.cpu)
                    )
        say(f"upstream_c: round {r + 1}/{args.rounds} ({time.monotonic() - t0:.0f} s)")
    medians = {k: statistics.median(v) for k, v in samples.items()}

    cpu = cpu_model()
    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    command = shlex.join(["python3", "scripts/upstream_c.py", *sys.argv[1:]])
    head = [
        f"pagebuddy / upstream pKVM page_alloc.c (Linux {source['kernel_version']}"
        + (
            f", Debian {source['package']} {source['package_version']}"
            if "package_version" in source
            else ""
        )
        + f"; {build['cc_version']}, {args.cflags})",
        f"{cpu}, every run pinned to CPU {args.cpu}; 2^{args.shift} pages of 4 KiB"
        + ("; every mapping advised for huge pages" if args.huge else "")
        + f"; median of "
        f"{args.rounds} rounds, C and pagebuddy alternating; {args.ops} steps timed after as many "
        f"untimed; init: {args.init_ops[0]} (zero off) or {args.init_ops[1]} (zero on) builds "
        f"timed after as many",
        f"{finished}; {command}",
        "cells: pagebuddy / C = time ratio, below 1x is pagebuddy faster; * misses its "
        "target (below 1x, intrusive below 0.9x)",
    ]
    out = [*head, "", "upstream with a no-op lock:", "", *table(medians, "none")]
    out += [
        "",
        "the same, each cell the median of the rounds' own ratios (pagebuddy's run over the C's "
        "of the same round):",
        "",
        *paired_table(paired(samples, "none")),
    ]
    out += ["", "upstream with its ticket lock, uncontended:", "", *table(medians, "ticket")]
    out += ["", *zeroing_floor(medians, samples)]
    out += ["", f"least and most of the {args.rounds} rounds:", "", *spread(samples)]
    print("\n".join(out))

    doc = {
        "schema": SCHEMA,
        "started_utc": started,
        "finished_utc": finished,
        "wall_seconds": round(time.monotonic() - wall, 1),
        "command": command,
        "cpu_model": cpu,
        "pinned_cpu": args.cpu,
        "huge_pages": args.huge,
        "transparent_hugepage": Path("/sys/kernel/mm/transparent_hugepage/enabled")
        .read_text()
        .strip()
        if Path("/sys/kernel/mm/transparent_hugepage/enabled").is_file()
        else None,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": git("status", "--porcelain", "--", "rust", "benches", "Cargo.lock"),
        "source": source,
        "build": build,
        "rust_executable": str(rust),
        "pages": 1 << args.shift,
        "page_size": 4096,
        "rounds": args.rounds,
        "ops": args.ops,
        "init_ops": {"off": args.init_ops[0], "on": args.init_ops[1]},
        "pfn_checks": checks,
        "samples_ns": samples,
        "medians_ns": medians,
        "zeroing_floor_ns": medians["on/churn/c-zeroing"],
        "paired_ratios": {lock: paired(samples, lock) for lock in LOCKS},
        "ratios": {
            lock: {
                f"{zero}/{store}/{w}": medians[f"{zero}/{w}/pagebuddy-{store}"]
                / medians[f"{zero}/{w}/c-{lock}"]
                for zero in ZEROS
                for store in STORES
                for w in WORKLOADS
            }
            for lock in LOCKS
        },
        "table": out,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    say(f"upstream_c: wrote {args.out} ({time.monotonic() - wall:.0f} s)")


if __name__ == "__main__":
    main()
