#!/bin/bash
dir=$(mktemp -d)
mkdir -p "$dir"/{src,docs}
touch "$dir"/src/{a,b,c}.py "$dir"/docs/readme.md
find "$dir" -type f -name '*.py' -exec wc -c {} + | sort -n
find "$dir" -type f -print0 | xargs -0 -n 1 basename
find "$dir" -name '*.md' | xargs -I{} cp {} "$dir/src/"
ls -la "$dir/src" | grep -c '\.md$'
du -sh "$dir" | cut -f1
env LC_ALL=C sort <<< $'b\na\nc'
time ls "$dir" > /dev/null
timeout 5 sleep 0.1
nice -n 10 echo "niced"
rm -rf "$dir"
