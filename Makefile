# Debian package. `make deb` works on a fresh Debian 12 machine: it installs
# the build dependencies when they are missing (apt-get update, then
# apt-get build-dep ./), builds in a scratch copy under dist/build/ so the
# working tree stays clean, and leaves the results in dist/:
#   dist/relay_<version>_<arch>.deb  (+ .changes, .buildinfo)
# The build fetches relay's Python dependencies from PyPI; see
# debian/README.source.

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BUILD_DIR := dist/build

.PHONY: deb clean-deb

deb:
	@if ! command -v dpkg-checkbuilddeps >/dev/null 2>&1 \
	    || ! dpkg-checkbuilddeps >/dev/null 2>&1; then \
	    echo "make deb: installing the build dependencies"; \
	    $(SUDO) apt-get update && $(SUDO) apt-get build-dep -y ./; \
	fi
	rm -rf $(BUILD_DIR)
	mkdir -p $(BUILD_DIR)/relay
	tar --exclude=./.git --exclude=./.venv --exclude=./.claude-code --exclude=./dist --exclude=./build \
	    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
	    --exclude=.ruff_cache --exclude=.pytest_cache -cf - . \
	    | tar -C $(BUILD_DIR)/relay -xf -
	cd $(BUILD_DIR)/relay && dpkg-buildpackage -us -uc -b
	cp $(BUILD_DIR)/relay_*.deb $(BUILD_DIR)/relay_*.changes \
	    $(BUILD_DIR)/relay_*.buildinfo dist/
	rm -rf $(BUILD_DIR)
	@ls -l dist/relay_*.deb

clean-deb:
	rm -rf $(BUILD_DIR) dist/relay_*.deb dist/relay_*.changes dist/relay_*.buildinfo

# Benchmarks (not tests; they print tables, never assert timings). bench.systemd
# boots systemd in systemd-nspawn with the package installed, so it needs root.
.PHONY: bench
bench:
	.venv/bin/python -m bench.foreground
	.venv/bin/python -m bench.hooks
	.venv/bin/python -m bench.cost
	.venv/bin/python -m bench.systemd
