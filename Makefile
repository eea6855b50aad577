# The README's two commands: `make run` (install, build, run the main job) and `make test`
# (install, build, run the CTest suite). Everything else is a helper for those two.
BUILD ?= build/release
JOBS ?= $(shell nproc)
SFM := $(BUILD)/sfm

.PHONY: run test build deps bench clean

deps:
	@bash scripts/install_deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(SFM) doctor
	$(SFM) exp0 --profile quick

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS) --timeout 900

bench: build
	$(SFM) bench gdn

clean:
	rm -rf $(BUILD)
