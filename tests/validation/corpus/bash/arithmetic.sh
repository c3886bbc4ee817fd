#!/usr/bin/env bash
a=7
b=3
echo "sum=$((a + b)) diff=$((a - b)) prod=$((a * b)) div=$((a / b)) mod=$((a % b)) pow=$((a ** 2))"
(( a > b )) && echo "a is bigger"
let "c = a * 2 + b"
echo "c=$c"
printf '%.3f\n' "$(echo "scale=5; $a / $b" | bc -l)"
hex=$(printf '%x' 255)
echo "255 is 0x$hex, back: $((16#$hex))"
fib() {
  local n=$1 x=0 y=1
  for ((i = 0; i < n; i++)); do
    local t=$((x + y)); x=$y; y=$t
  done
  echo "$x"
}
echo "fib 20 = $(fib 20)"
seq 1 10 | paste -sd' ' -
