# Container images and the container tests (issue 11). Included at the end of
# the Makefile; nothing here runs at parse time (the Makefile is also read
# inside the image build). See docker/README.md.
#
#   make docker-image          mod_h2rs:latest: the official httpd:2.4 layout, built on
#                              local stand-in base images (no registry needed)
#   make docker-image-debian   mod_h2rs:debian: Debian's apache2 package, a2enmod h2rs
#   make docker-images         both
#   make docker-context        stage the build context (docker/.cache/context) for a
#                              plain `docker build` elsewhere
#   make docker-test           the container harness's self-test (tests/container.py)
#   make docker-list           the images these targets made
#   make docker-clean          remove those images (by tag) and docker/.cache

.PHONY: docker-image docker-image-debian docker-images docker-context docker-test docker-list docker-clean

docker-image:
	scripts/docker-image

docker-image-debian:
	scripts/docker-image --debian

docker-images:
	scripts/docker-image --all

docker-context:
	scripts/docker-image --context

docker-test: docker-images
	scripts/setup-deps --venv
	.venv/bin/python -m pytest tests/container.py -v

docker-list:
	scripts/docker-image --list

docker-clean:
	scripts/docker-image --clean
