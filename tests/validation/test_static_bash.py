"""Bash rules: denied command words wherever bash would run them, and /dev/tcp and /dev/udp."""

from __future__ import annotations

import pytest
from static_helpers import Found, check, found, rules

from sandbox_server.validation.static import DENIED_COMMAND, NETWORK, UNANALYSABLE


def sh(code: str, **bash: object) -> Found:
    return found("bash", code, rules(bash=bash) if bash else None)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("curl https://example.org\n", [(DENIED_COMMAND, 1, 1)]),
        ("  /usr/bin/wget -q x\n", [(DENIED_COMMAND, 1, 3)]),
        ("echo a | nc -l 80\n", [(DENIED_COMMAND, 1, 10)]),
        ("true && ssh host; false || scp a b & telnet h\n",
         [(DENIED_COMMAND, 1, 9), (DENIED_COMMAND, 1, 28), (DENIED_COMMAND, 1, 38)]),
        ("ls |& socat - tcp:h:1\n", [(DENIED_COMMAND, 1, 7)]),
        ("x=$(curl -s h)\n", [(DENIED_COMMAND, 1, 5)]),
        ("echo \"$(wget -O- h)\"\n", [(DENIED_COMMAND, 1, 9)]),
        ("echo `nc h 1`\n", [(DENIED_COMMAND, 1, 7)]),
        ("diff <(curl a) >(wget b)\n", [(DENIED_COMMAND, 1, 8), (DENIED_COMMAND, 1, 18)]),
        ("(curl h)\n{ wget h; }\n", [(DENIED_COMMAND, 1, 2), (DENIED_COMMAND, 2, 3)]),
        ("if true; then\n  curl h\nelse\n  wget h\nfi\n", [(DENIED_COMMAND, 2, 3), (DENIED_COMMAND, 4, 3)]),
        ("while curl h; do nc h 1; done\n", [(DENIED_COMMAND, 1, 7), (DENIED_COMMAND, 1, 18)]),
        ("! dd if=/dev/zero of=x\n", [(DENIED_COMMAND, 1, 3)]),
        ("A=1 B=\"2 3\" curl h\n", [(DENIED_COMMAND, 1, 13)]),
        (">out.txt 2>&1 curl h\n", [(DENIED_COMMAND, 1, 15)]),
        ("f() { curl h; }\nfunction g { wget h; }\n", [(DENIED_COMMAND, 1, 7), (DENIED_COMMAND, 2, 14)]),
        ("case $1 in\n  a) curl h ;;\n  curl|wget) echo pattern ;;\nesac\n", [(DENIED_COMMAND, 2, 6)]),
        ("echo curl wget nc; printf '%s' ssh; grep -r sudo .\n", []),  # arguments are not commands
        ("for tool in curl wget; do echo $tool; done\n", []),
        ("tools=(curl wget nc)\n[[ $x == curl && $y != wget ]]\n", []),
        ("curly --help; ncdu; sshd_config=1; ddrescue x\n", []),  # names that only start like denied ones
    ],
)
def test_command_words(code: str, expected: Found) -> None:
    assert sh(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("exec curl h\n", [(DENIED_COMMAND, 1, 6)]),
        ("xargs -n 1 -P 4 curl < urls\n", [(DENIED_COMMAND, 1, 17)]),
        ("find . -name x | xargs -I {} wget {}\n", [(DENIED_COMMAND, 1, 30)]),
        ("env -i PATH=/bin FOO=1 nc h 1\n", [(DENIED_COMMAND, 1, 24)]),
        ("sudo -u root ssh h\n", [(DENIED_COMMAND, 1, 1), (DENIED_COMMAND, 1, 14)]),
        ("command curl h\nbuiltin curl\ncommand -v curl\n", [(DENIED_COMMAND, 1, 9), (DENIED_COMMAND, 2, 9)]),
        ("nohup nice -n 5 timeout -s KILL 10 curl h &\n", [(DENIED_COMMAND, 1, 36)]),
        ("time wget h\nstdbuf -oL nc h 1\n", [(DENIED_COMMAND, 1, 6), (DENIED_COMMAND, 2, 12)]),
        ("find / -name '*.log' -exec curl -T {} h \\;\n", [(DENIED_COMMAND, 1, 28)]),
        ("exec 3<>/tmp/f\nexec >log 2>&1\n", []),
    ],
)
def test_wrappers_run_the_next_command(code: str, expected: Found) -> None:
    assert sh(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ('c"ur"l h\n', [(DENIED_COMMAND, 1, 1)]),
        ("\\curl h\n", [(DENIED_COMMAND, 1, 1)]),
        ("'wget' h\n", [(DENIED_COMMAND, 1, 1)]),
        ("$'\\x63\\x75rl' h\n", [(DENIED_COMMAND, 1, 1)]),
        ("cu\\\nrl h\n", [(DENIED_COMMAND, 1, 1)]),  # a line continuation inside the word
        ("/usr/bin/cur? h\n/???/bin/w*et h\n", [(DENIED_COMMAND, 1, 1), (DENIED_COMMAND, 2, 1)]),
        ("c=curl\n$c h\n", [(DENIED_COMMAND, 2, 1)]),
        ('tool="nc -l"\n"${tool}" 80\n', [(DENIED_COMMAND, 2, 1)]),
        ('dir=/usr/bin\n"$dir/curl" h\n', [(DENIED_COMMAND, 2, 1)]),
        ("alias get='curl -s'\n", [(DENIED_COMMAND, 1, 12)]),
    ],
)
def test_quoting_and_variables_do_not_hide_a_command(code: str, expected: Found) -> None:
    assert sh(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("bash -c 'echo hi; curl h'\n", [(DENIED_COMMAND, 1, 19)]),
        ("sh -ec \"wget h\"\n", [(DENIED_COMMAND, 1, 9)]),
        ("eval 'nc -l 80'\n", [(DENIED_COMMAND, 1, 7)]),
        ("eval curl h\n", [(DENIED_COMMAND, 1, 6)]),
        ("trap 'curl h' EXIT\n", [(DENIED_COMMAND, 1, 7)]),
        ("watch -n 1 'curl h'\n", [(DENIED_COMMAND, 1, 13)]),
        ("bash <<< 'wget h'\n", [(DENIED_COMMAND, 1, 11)]),
        ("bash <<EOF\necho fine\ncurl h\nEOF\n", [(DENIED_COMMAND, 3, 1)]),
        ("cat <<EOF\ncurl is just text here\n$(wget h)\nEOF\n", [(DENIED_COMMAND, 3, 3)]),
        ("cat <<'EOF'\n$(wget h) is literal here\nEOF\n", []),
        ("cat <<-EOF\n\tcurl is text\n\tEOF\nnc h 1\n", [(DENIED_COMMAND, 4, 1)]),  # code resumes after the body
    ],
)
def test_scripts_inside_scripts_are_checked(code: str, expected: Found) -> None:
    assert sh(code) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("exec 3<>/dev/tcp/example.org/80\n", [(NETWORK, 1, 9)]),
        ("echo x > /dev/udp/10.0.0.1/53\n", [(NETWORK, 1, 10)]),
        ("cat < \"/dev/tcp/$host/$port\"\n", [(NETWORK, 1, 8)]),
        ("exec 3<>$'/dev/\\x74cp/h/80'\n", [(NETWORK, 1, 9)]),  # decoded from ANSI-C quoting
        ("# exec 3<>/dev/tcp/h/80 in a comment\necho /dev/tcpx\n", []),
    ],
)
def test_network_redirections(code: str, expected: Found) -> None:
    assert sh(code) == expected


def test_custom_denied_commands() -> None:
    assert sh("python3 -c 'print(1)'\ncurl h\n", denied_commands=("python3",)) == [(DENIED_COMMAND, 1, 1)]


def test_comments_are_not_code() -> None:
    assert sh("# curl h\necho hi # wget h\necho a#b  # nc\n") == []
    assert sh("echo ${#array[@]} $# # curl\n") == []


def test_deep_substitutions_are_unanalysable() -> None:
    assert sh("echo " + "$(" * 5000 + "x") == [(UNANALYSABLE, 1, 2006)]


def test_messages_name_the_command() -> None:
    assert check("bash", "/usr/bin/curl h")[0].message == "command 'curl' is denied"
