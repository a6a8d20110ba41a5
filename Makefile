# lmtpgate — the two commands that matter on a fresh Debian 12 machine:
#   make demo   stand up a Cyrus murder on loopback, run lmtpgate, deliver, show where mail went
#   make test   install what the tests need and run every test (real Cyrus included)

GO      ?= go
VERSION ?= $(shell packaging/version.sh 2>/dev/null || echo 0.0.0~unknown)
LDFLAGS := -X main.version=$(VERSION)

# Debian packages the tests, the demo and the benchmark need. The Makefile
# installs them itself, so a fresh machine needs nothing but Go and make.
# postfix is for the Postfix suite (test/postfix); systemd-container and
# debootstrap for the real-systemd suite (test/systemd); installing them
# upgrades the host's systemd packages to the current point release;
# prometheus brings promtool, which checks the metrics and alerting rules.
DEB_PKGS := cyrus-imapd cyrus-murder cyrus-clients cyrus-admin sasl2-bin postfix \
            rpm lintian mandoc systemd init-system-helpers adduser git ca-certificates \
            systemd-container debootstrap prometheus
# Only `make bench` needs these: gnuplot draws the benchmark's plot.
BENCH_PKGS := gnuplot-nox

.PHONY: all build deps test test-short test-postfix fault-matrix vet fmt-check demo bench package package-test test-systemd verify-units fuzz clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o build/lmtpgate ./cmd/lmtpgate
	$(GO) build -trimpath -o build/lmtpbench ./cmd/lmtpbench

# Install missing Debian packages (as root; Debian's policy-rc.d keeps the
# system-wide Cyrus from starting). Nothing is done when all are present.
deps:
	@missing=$$(for p in $(DEB_PKGS) $(EXTRA_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps must run as root (apt-get install $$missing)"; exit 1; fi; \
		policy=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; policy=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; rc=$$?; \
		[ -z "$$policy" ] || rm -f /usr/sbin/policy-rc.d; [ $$rc = 0 ] || exit $$rc; \
	else echo "all Debian packages present"; fi

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Every test, real Cyrus included: LMTPGATE_REQUIRE_CYRUS=1 turns a missing
# Cyrus into a failure instead of a skip, so this cannot pass vacuously.
test: deps fmt-check vet
	LMTPGATE_REQUIRE_CYRUS=1 $(GO) test -count=1 -timeout 12m ./...
	$(MAKE) package-test
	$(MAKE) test-systemd

# The Postfix suite alone (also part of `make test`): a private Postfix
# delivers through lmtpgate into a real Cyrus murder while faults are
# injected, in namespaces of its own (root needed).
test-postfix: deps
	LMTPGATE_REQUIRE_CYRUS=1 $(GO) test -count=1 -timeout 12m ./test/postfix/

# Run the Postfix suite and write its fault matrix to docs/fault-matrix.md.
# The table records failing rows too, so the target succeeds whenever the
# table was written; the suite's own exit status is printed.
fault-matrix: deps
	@rm -f docs/fault-matrix.md.new
	LMTPGATE_REQUIRE_CYRUS=1 LMTPGATE_FAULT_MATRIX=$(CURDIR)/docs/fault-matrix.md.new $(GO) test -count=1 -timeout 12m ./test/postfix/; \
		echo "go test exit status $$?"
	@test -s docs/fault-matrix.md.new && mv docs/fault-matrix.md.new docs/fault-matrix.md && echo "wrote docs/fault-matrix.md"

# Unit tests only (fakes on loopback; the Cyrus suite is skipped).
test-short:
	$(GO) test -short ./...

demo: deps build
	$(GO) run ./cmd/lmtpdemo -lmtpgate build/lmtpgate

# BENCH_ARGS go to `lmtpbench lab`: by default a variant of run b with
# backends.verify_rcpt on, whose cost the results then show; other
# variants the same way, e.g.
#   make bench BENCH_ARGS="--gate-extra 'big-idle=backends: {max_idle: 64}'"
BENCH_ARGS ?= --gate-extra 'verify=backends: {verify_rcpt: true}'
bench:
	$(MAKE) --no-print-directory deps EXTRA_PKGS="$(BENCH_PKGS)"
	bench/run.sh $(BENCH_ARGS)

package:
	packaging/build.sh $(VERSION) amd64
	packaging/build.sh $(VERSION) arm64

package-test: deps
	packaging/package-test.sh

# The package installed and driven in Debian 12 booted with systemd 252 in
# systemd-nspawn (root; the Debian tree is cached in /var/cache/lmtpgate-test).
test-systemd: deps
	test/systemd/run.sh

verify-units:
	packaging/verify-units.sh

# A short run of every fuzz target (the seed corpora run in `make test`).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf build dist
