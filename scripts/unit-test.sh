#!/usr/bin/env bash
# Runs the Swift test suites (built already: `swift build --build-tests`) within a time
# limit. A test that hangs then fails the run in minutes and is named, instead of
# holding CI until its own limit with nothing to show but a thread dump.
#
#   UNIT_TEST_LIMIT  seconds for the whole run (default 900; a run takes under a minute)
set -uo pipefail
cd "$(dirname "$0")/.."
limit=${UNIT_TEST_LIMIT:-900}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# A crash prints the crashed thread's backtrace, without inlined frames: hundreds of
# tests run at once, and the runtime's default (every thread, fully symbolicated from
# the 170 MB debug bundle) took minutes per thread and ran past CI's limit.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=yes,interactive=no,threads=crashed,symbolicate=fast}

# timeout signals the whole process group: swift-test, the test bundle, and the target
# processes the tests started.
timeout --kill-after=30 "$limit" ${SWIFT:-swift} test --skip-build 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo
  echo "unit tests did not finish within ${limit} s. Started and never ended:"
  # Swift Testing prints `◇ Test "name" started.` and, when it ends, a line with ✔ or ✘.
  sed -nE 's/^◇ Test ("[^"]*") started.*/\1/p' "$log" | sort >"$log.started"
  grep -v 'recorded an issue' "$log" | sed -nE 's/^(✔|✘) Test ("[^"]*").*/\2/p' | sort >"$log.ended"
  comm -23 "$log.started" "$log.ended" | sed 's/^/  /'
  rm -f "$log.started" "$log.ended"
fi
# A test process that crashed leaves the targets it started running: stop them.
pkill -KILL -f -- "--store file:${TMPDIR:-/tmp}/nvme-csi-test-" 2>/dev/null || true
exit "$status"
