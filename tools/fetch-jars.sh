#!/usr/bin/env bash
# Usage: tools/fetch-jars.sh NAME...  (NAME = kafka, s3proxy, spark)
# Copies the runtime dependencies of tools/jars/NAME/pom.xml from Maven Central into .tools/jars/NAME/,
# once: a set is skipped when .tools/jars/NAME/.complete exists. Works from any directory.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$#" -eq 0 ]; then
  echo "usage: $0 NAME... (one of: $(ls "$root/tools/jars" | tr '\n' ' '))" >&2
  exit 2
fi

for name in "$@"; do
  pom="$root/tools/jars/$name/pom.xml"
  out="$root/.tools/jars/$name"
  if [ ! -f "$pom" ]; then
    echo "fetch-jars: no $pom" >&2
    exit 2
  fi
  [ -f "$out/.complete" ] && continue
  mkdir -p "$out"
  (
    flock 9  # concurrent callers (parallel test sessions) fetch a set once
    if [ ! -f "$out/.complete" ]; then
      start=$SECONDS
      log="$out/.mvn.log"
      if ! mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
        -DoutputDirectory="$out" -DincludeScope=runtime -f "$pom" >"$log" 2>&1; then
        cat "$log" >&2
        echo "fetch-jars: $name: mvn failed (is Maven Central reachable?)" >&2
        exit 1
      fi
      rm -f "$log"
      touch "$out/.complete"
      echo "fetch-jars: $name: $(find "$out" -name '*.jar' | wc -l) jars in .tools/jars/$name ($((SECONDS - start)) s)"
    fi
  ) 9>"$out/.lock"
done
