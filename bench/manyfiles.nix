# A store path of many files: `files` files of `kilobytes` KiB each (zeros: only the layout matters),
# in directories of 100. 4096 x 256 KiB is a 1 GiB NAR; 10000 x 0 a listing of 10,000 files.
{ seed ? "bench-many", files ? "4096", kilobytes ? "256" }:
import ../peerix/cli/mk-derivation.nix seed "bench-manyfiles-${files}x${kilobytes}K" ''
  /usr/bin/mkdir -p $out
  i=0
  while [ $i -lt ${files} ]; do
    d=$out/d$((i / 100))
    [ -d $d ] || /usr/bin/mkdir $d
    if [ ${kilobytes} -gt 0 ]; then
      /usr/bin/head -c ${kilobytes}K /dev/zero > $d/f$i
    else
      echo "$i ${seed}" > $d/f$i
    fi
    i=$((i + 1))
  done
''
