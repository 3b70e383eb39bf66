"""Scrape a ramwatchd daemon's /metrics every INTERVAL seconds until STOP_FILE
exists; keep the series this proof compares with the capture.

    python3 results/gpu/scrape.py URL OUT_DIR STOP_FILE [INTERVAL]

Writes OUT_DIR/metrics_series.jsonl: one line a scrape, {"t": unix time,
"samples": [[name, labels, value], ...]} for the pinned, process, resident and
/dev/shm metrics; and OUT_DIR/metrics_holding.txt: the whole exposition of the
last scrape at which both tp-worker groups had pinned ranges.
"""
import json
import os
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

KEPT = ("ramwatchd_cuda_pinned_requested_bytes", "ramwatchd_cuda_pinned_mapped_bytes",
        "ramwatchd_processes", "ramwatchd_resident_bytes", "ramwatchd_proportional_resident_bytes",
        "ramwatchd_shm_object_bytes", "ramwatchd_shm_object_processes", "ramwatchd_shm_orphaned_bytes",
        "ramwatchd_programs_attached", "ramwatchd_events_lost_total", "ramwatchd_smaps_reads_total")
TREE = ("tp-worker-0", "tp-worker-1", "tree-parent")


def kept(name, labels):
    if name not in KEPT:
        return False
    group = labels.get("group")
    return group is None or group in TREE


def main(url, out_dir, stop_file, interval=2.0):
    series = open(os.path.join(out_dir, "metrics_series.jsonl"), "w")
    failures = 0
    while not os.path.exists(stop_file):
        started = time.time()
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError as err:
            failures += 1
            print(f"scrape: {err}", file=sys.stderr)
            time.sleep(interval)
            continue
        samples = [[s.name, s.labels, s.value] for family in text_string_to_metric_families(text)
                   for s in family.samples if kept(s.name, s.labels)]
        series.write(json.dumps({"t": started, "seconds": time.time() - started, "samples": samples}) + "\n")
        series.flush()
        pinned = {s[1]["group"] for s in samples if s[0] == "ramwatchd_cuda_pinned_requested_bytes"}
        if {"tp-worker-0", "tp-worker-1"} <= pinned:
            with open(os.path.join(out_dir, "metrics_holding.txt"), "w") as f:
                f.write(f"# scraped at {time.strftime('%H:%M:%S', time.localtime(started))}\n" + text)
        time.sleep(max(0.0, interval - (time.time() - started)))
    series.close()
    print(f"scrape: stopped; {failures} failed scrapes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(float(a) for a in sys.argv[4:5]))
