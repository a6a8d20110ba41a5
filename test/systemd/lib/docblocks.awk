# docblocks.awk: the command blocks of docs/operations.md that are meant
# to be typed, with what each prints.
#
#   awk -v dir=DIR -f docblocks.awk operations.md
#
# In the sections named by the variables MIGRATION and DRILL, every fenced
# ```sh block is written to DIR/N.sh (N counting from 1 in document
# order) and a ```text block right after it (nothing but blank lines in
# between) to DIR/N.txt. Each block is listed on stdout as "N SECTION
# STEP": SECTION is "migration" or "drill", STEP the number of the "### N."
# heading it is under (the drill's blocks have the step "drill").
# Indented blocks and fences of other languages are skipped. Anything the
# convention does not allow (a text block after prose, a second text block,
# a command block outside a step, an unclosed fence, a missing section)
# is an error: exit status 1 and a message naming the line, so that a
# change of layout fails the check instead of silently running less.

function bad(msg) {
	printf "operations.md:%d: %s\n", NR, msg > "/dev/stderr"
	failed = 1
	exit 1
}

BEGIN {
	MIGRATION = "## Moving a Cyrus frontend from Cyrus's lmtpd to lmtpgate"
	DRILL = "## Outage drill: the murder master is down"
	if (dir == "") {
		print "docblocks.awk: no -v dir=" > "/dev/stderr"
		failed = 1
		exit 1
	}
	n = 0; section = ""; step = ""; fence = ""; after_sh = 0; has_text = 0
}

# Inside a fence: copy sh and text blocks, until the closing fence.
fence != "" {
	if ($0 == "```") {
		if (fence == "sh" || fence == "text") close(file)
		after_sh = (fence == "sh")
		if (fence == "text") has_text = 1
		fence = ""
		next
	}
	if (fence == "sh" || fence == "text") print > file
	next
}

/^## / {
	section = ""
	if ($0 == MIGRATION) section = "migration"
	if ($0 == DRILL) section = "drill"
	if (section != "") {
		if (seen[section]) bad("a second section \"" $0 "\"")
		seen[section] = 1
	}
	step = (section == "drill") ? "drill" : ""
	after_sh = 0
	next
}

/^### / && section == "migration" {
	if (!match($0, /^### [0-9]+\. /)) bad("a step heading without a number: " $0)
	step = substr($0, 5, RLENGTH - 6)
	after_sh = 0
	next
}

/^```/ {
	lang = substr($0, 4)
	if (lang == "") bad("a fence without a language")
	if (section == "") { fence = "other"; next }
	if (lang == "sh") {
		if (step == "") bad("a command block outside a numbered step")
		n++
		file = dir "/" n ".sh"
		printf "" > file
		print n, section, step
		fence = "sh"
		has_text = 0
		next
	}
	if (lang == "text") {
		if (!after_sh) bad("a text block that does not come right after a command block")
		if (has_text) bad("a second text block for one command block")
		file = dir "/" n ".txt"
		fence = "text"
		next
	}
	fence = "other"
	after_sh = 0
	next
}

/^[ \t]*$/ { next }

# Prose: a text block after it belongs to no command.
{ after_sh = 0 }

END {
	if (failed) exit 1
	if (fence != "") bad("a fence that is never closed")
	if (!seen["migration"]) bad("no section \"" MIGRATION "\"")
	if (!seen["drill"]) bad("no section \"" DRILL "\"")
}
