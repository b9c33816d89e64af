# Multi-stage build of the agent: a static binary on a minimal base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/nftpolicy-agent ./cmd/nftpolicy-agent

FROM gcr.io/distroless/static-debian12
LABEL org.opencontainers.image.title="nftpolicy-agent" \
      org.opencontainers.image.description="Kubernetes NetworkPolicy enforcer on nftables" \
      org.opencontainers.image.source="https://github.com/nftpolicy/nftpolicy"
COPY --from=build /out/nftpolicy-agent /nftpolicy-agent
# Runs as root inside the container only for CAP_NET_ADMIN on the host network
# namespace; the DaemonSet drops every other capability.
ENTRYPOINT ["/nftpolicy-agent"]
