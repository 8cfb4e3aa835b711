# Relevo's API and controller as a container, for the compose stack
# (docker-compose.yml): it drives the PostgreSQL node containers through the
# Docker socket mounted into it.
# Node 24 LTS on Debian 12 (bookworm): plain node:24 is Debian 13, which has no
# postgresql-15 package.
FROM node:24-bookworm-slim

# PostgreSQL 15's own tools, run by Relevo itself: pg_receivewal (the WAL
# archive) and pg_waldump (the WAL summaries behind incremental backups). The
# package must not create a cluster of its own.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/relevo.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/relevo
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY bin ./bin
COPY prisma ./prisma
COPY schema ./schema
COPY scripts ./scripts
COPY src ./src
RUN npm run build && npm prune --omit=dev && ln -s /opt/relevo/bin/relevo /usr/local/bin/relevo

ENV NODE_ENV=production \
    RELEVO_HOME=/var/lib/relevo
VOLUME /var/lib/relevo
EXPOSE 4000
ENTRYPOINT ["relevo"]
CMD ["up"]
