package config

import (
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Keys lists every key the configuration file accepts, as dotted paths
// ("lookup.cache.positive_ttl"), sorted. Sections (log, lookup.cache, ...)
// are not listed, only the keys that take a value; backends.addresses is
// one key whose value is a map. It is read from the same struct tags the
// parser uses, so documentation can be checked against it.
func Keys() []string {
	var out []string
	collectKeys("", reflect.TypeOf(raw{}), &out)
	sort.Strings(out)
	return out
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func collectKeys(prefix string, t reflect.Type, out *[]string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(unmarshalerType) {
			collectKeys(prefix+name+".", ft, out)
			continue
		}
		*out = append(*out, prefix+name)
	}
}
