package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// A key of the configuration file: its dotted path ("lookup.cache.positive_ttl")
// and the Config field it sets ("Lookup.Cache.PositiveTTL", "" for keys
// that set no single field, such as the password keys).
type keyDef struct {
	name, field string
}

var keyDefs = func() []keyDef {
	var out []keyDef
	collectKeys("", "", reflect.TypeOf(raw{}), &out)
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}()

// Keys lists every key the configuration file accepts, as dotted paths,
// sorted. Sections (log, lookup.cache, ...) are not listed, only the keys
// that take a value; backends.addresses is one key whose value is a map.
// It is read from the same struct tags the parser uses, so documentation
// can be checked against it.
func Keys() []string {
	out := make([]string, len(keyDefs))
	for i, k := range keyDefs {
		out[i] = k.name
	}
	return out
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func collectKeys(prefix, fieldPrefix string, t reflect.Type, out *[]keyDef) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		field := f.Tag.Get("cfg")
		switch {
		case field == "-":
			field = ""
		case field != "" && fieldPrefix != "":
			field = fieldPrefix + "." + field
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(unmarshalerType) {
			sub := fieldPrefix
			if field != "" {
				sub = field
			}
			collectKeys(prefix+name+".", sub, ft, out)
			continue
		}
		*out = append(*out, keyDef{name: prefix + name, field: field})
	}
}

// isSection reports whether k is a section that holds keys.
func isSection(k string) bool {
	for _, d := range keyDefs {
		if strings.HasPrefix(d.name, k+".") {
			return true
		}
	}
	return false
}

// Value returns the value in effect for key in c, rendered as the
// documentation writes values (durations as "30s", lists as YAML flow
// lists), and false for a key that sets no single field.
func Value(c *Config, key string) (string, bool) {
	for _, d := range keyDefs {
		if d.name != key {
			continue
		}
		if d.field == "" {
			return "", false
		}
		v := reflect.ValueOf(*c)
		for _, part := range strings.Split(d.field, ".") {
			v = v.FieldByName(part)
			if !v.IsValid() {
				panic("config: key " + key + " names no field " + d.field)
			}
		}
		return Show(v.Interface()), true
	}
	return "", false
}

// Show renders a setting's value as the documentation writes it.
func Show(v any) string {
	switch x := v.(type) {
	case time.Duration:
		return showDuration(x)
	case string:
		if x == "" {
			return `""`
		}
		return x
	case []string:
		q := make([]string, len(x))
		for i, s := range x {
			q[i] = fmt.Sprintf("%q", s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case map[string]string:
		if len(x) == 0 {
			return "{}"
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s: %q", k, x[k]))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case fmt.Stringer:
		return strings.ToLower(x.String())
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice {
		q := make([]string, rv.Len())
		for i := range q {
			q[i] = fmt.Sprintf("%q", fmt.Sprint(rv.Index(i).Interface()))
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return fmt.Sprint(v)
}

// showDuration writes 30s, 5m, 1h30m, 200ms: Go's form without the zero
// units ("5m0s").
func showDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
