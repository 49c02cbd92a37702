#!/usr/bin/env bash
# Runs inside `testenv run` (see sandbox.sh): DBQO_TESTENV and KUBECONFIG are set.
set -euo pipefail
BIN="$CARGO_TARGET_DIR/debug/db-query-operator"
PG_PORT=$(jq -r .postgres.port "$DBQO_TESTENV")
PG_PASSWORD=$(jq -r .postgres.password "$DBQO_TESTENV")
export PGPASSWORD="$PG_PASSWORD"
psql_admin() { psql -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PG_PORT user=postgres dbname=$1" "${@:2}"; }

echo "== PostgreSQL: a users table"
psql_admin postgres -c "CREATE DATABASE sandbox"
psql_admin sandbox -f examples/configmap-per-row/schema.sql
psql_admin sandbox -c "TABLE users"

echo "== Kubernetes: the CRD and the sample DBQR"
"$BIN" crd | kubectl apply -f -
kubectl wait --for condition=established --timeout=30s crd/databasequeryresources.dbqo.dev
kubectl create secret generic users-db \
  --from-literal=host=127.0.0.1 --from-literal=port="$PG_PORT" --from-literal=username=postgres \
  --from-literal=password="$PG_PASSWORD" --from-literal=dbname=sandbox --from-literal=sslmode=disable
kubectl apply -f examples/configmap-per-row/dbqr.yaml
kubectl get dbqr

echo "== The objects the DBQR's rows become (db-query-operator render --database-url ...)"
"$BIN" render -f examples/configmap-per-row/dbqr.yaml \
  --database-url "postgresql://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/sandbox?sslmode=disable"
