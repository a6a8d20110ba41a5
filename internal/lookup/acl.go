package lookup

import "strings"

// Rights returns the rights that identity holds under a Cyrus ACL string
// ("id TAB rights TAB ..."). As in Cyrus (lib/acl.c, cyrus_acl_myrights),
// "anyone" matches every identity, "anonymous" matches only the anonymous
// identity, and an entry whose identifier starts with '-' removes rights.
// Group identifiers ("group:...") are not expanded: a frontend has no
// access to the backend's group database, so they grant nothing here.
func Rights(acl, identity string) string {
	var pos, neg [128]bool
	fields := strings.Split(acl, "\t")
	for i := 0; i+1 < len(fields); i += 2 {
		id, rights := fields[i], fields[i+1]
		target := &pos
		if strings.HasPrefix(id, "-") {
			target, id = &neg, id[1:]
		}
		if id != "anyone" && id != identity {
			continue
		}
		for _, r := range rights {
			if r < 128 {
				target[r] = true
			}
		}
	}
	var b strings.Builder
	for r := range 128 {
		if pos[r] && !neg[r] {
			b.WriteByte(byte(r))
		}
	}
	return b.String()
}
