# Multi-stage build of the agent: a static binary on a minimal base.
# Without a container engine, `make image` builds the same image (the binary on a
# distroless-like layer, same entrypoint, user and labels) as an OCI archive.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/nftpolicy-agent ./cmd/nftpolicy-agent

FROM gcr.io/distroless/static-debian12
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="nftpolicy-agent" \
      org.opencontainers.image.description="Kubernetes NetworkPolicy enforcer on nftables" \
      org.opencontainers.image.source="https://github.com/nftpolicy/nftpolicy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/nftpolicy-agent /nftpolicy-agent
# Root inside the container, but only for CAP_NET_ADMIN in the host network namespace:
# the DaemonSet drops every other capability and forbids privilege escalation. (As a
# non-root user the capability would have to be a file capability, which
# no_new_privs — allowPrivilegeEscalation: false — ignores.)
USER 0:0
ENTRYPOINT ["/nftpolicy-agent"]
