#!/usr/bin/env bash
fruits=(apple banana cherry)
fruits+=("dragon fruit")
declare -A colour=([apple]=red [banana]=yellow)
colour[cherry]=red

echo "${#fruits[@]} fruits: ${fruits[*]}"
for fruit in "${fruits[@]}"; do
  echo "$fruit -> ${colour[$fruit]:-unknown}"
done
for key in "${!colour[@]}"; do
  printf '%s ' "$key"
done
echo
mapfile -t numbers < <(seq 1 5)
sum=0
for n in "${numbers[@]}"; do sum=$((sum + n)); done
echo "sum=$sum upper=${fruits[0]^^} sub=${fruits[1]:1:3} replaced=${fruits[2]//r/R}"
IFS=, read -ra parts <<< "a,b,c"
echo "${parts[1]}"
