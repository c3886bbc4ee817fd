#!/bin/bash
name="report"
out="/tmp/${name}.md"

cat > "$out" <<EOF
# ${name^}

Generated on $(date +%Y-%m-%d) by $(whoami).
Files here: $(ls | wc -l)
EOF

cat <<-'TEMPLATE'
	Literal text: $HOME is not expanded, nor is $(this).
	TEMPLATE

python3 - <<'PY'
import json
print(json.dumps({"from": "python"}))
PY

sh <<'SCRIPT'
echo "a script fed to a shell"
ls /tmp | head -n 1
SCRIPT

read -r first rest <<< "one two three"
echo "$first / $rest"
wc -c "$out"
