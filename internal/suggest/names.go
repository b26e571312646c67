package suggest

import "golang.org/x/net/publicsuffix"

// collapse maps each of names (normalised, distinct) to the pattern a rule
// lists for it: the name itself, or "*.DOMAIN" when at least n distinct
// names strictly below DOMAIN were seen, DOMAIN being their registrable
// domain (public suffix plus one label, from the Public Suffix List).
//
// So the wildcard never reaches past one registrant: a.example.co.uk,
// b.example.co.uk and c.example.co.uk make "*.example.co.uk", while
// a.co.uk, b.co.uk and c.co.uk stay three names (each is its own
// registrable domain, and "*.co.uk" would allow a whole country's
// companies). The list's private section counts too: names below
// github.io or s3.amazonaws.com belong to different customers and are
// never collapsed. The domain itself is not below itself: "example.com"
// stays beside "*.example.com". n of 0 never collapses.
func collapse(names []string, n int) map[string]string {
	out := make(map[string]string, len(names))
	below := make(map[string][]string)
	for _, name := range names {
		out[name] = name
		if n <= 0 {
			continue
		}
		if d := registrable(name); d != "" && d != name {
			below[d] = append(below[d], name)
		}
	}
	for d, under := range below {
		if len(under) >= n {
			for _, name := range under {
				out[name] = "*." + d
			}
		}
	}
	return out
}

// registrable returns name's registrable domain, "" when it has none (the
// name is a public suffix, or not a name the list can read).
func registrable(name string) string {
	d, err := publicsuffix.EffectiveTLDPlusOne(name)
	if err != nil || len(d) > len(name) || name[len(name)-len(d):] != d {
		return ""
	}
	return d
}
