# docmatch.awk: does a command's output match the text block the docs
# show after it?
#
#   LC_ALL=C awk -f docmatch.awk EXPECTED OUTPUT
#
# Every line of EXPECTED must match a line of OUTPUT, in order; other
# output lines may come in between. "…" in an expected line matches any
# text (also none); a line that is only "…" matches nothing in particular.
# Trailing white space is ignored on both sides. Exit status 1, with the
# first line that found no match, otherwise 0. Run it with LC_ALL=C: "…"
# is then three bytes like any others.

# glob LINE PATTERN: LINE is PATTERN with each "…" standing for any text.
function glob(s, p,    parts, n, k, pos, i, last) {
	n = split(p, parts, "…")
	if (n == 1) return s == p
	if (substr(s, 1, length(parts[1])) != parts[1]) return 0
	pos = length(parts[1]) + 1
	for (k = 2; k < n; k++) {
		i = index(substr(s, pos), parts[k])
		if (i == 0) return 0
		pos += i - 1 + length(parts[k])
	}
	last = parts[n]
	if (length(s) - pos + 1 < length(last)) return 0
	return substr(s, length(s) - length(last) + 1) == last
}

FNR == NR {
	sub(/[ \t\r]+$/, "")
	if ($0 != "…") want[++nw] = $0
	next
}

{
	sub(/[ \t\r]+$/, "")
	got[++ng] = $0
}

END {
	j = 1
	for (i = 1; i <= nw; i++) {
		while (j <= ng && !glob(got[j], want[i])) j++
		if (j > ng) {
			printf "no output line matches expected line %d (after the lines matched before it): %s\n", i, want[i]
			exit 1
		}
		j++
	}
}
