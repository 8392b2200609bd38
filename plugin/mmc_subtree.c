/*
 * The subscriptions mmc_client_control keeps for clients on mosquitto 2.0 (2.1 has
 * broker subscriptions, see mmc_client_control.c), matched through a topic tree as
 * the broker's own are: a published topic costs a walk of its levels, whatever the
 * number of subscriptions.
 *
 * - A node per filter level; a node's exact children are found through one hash
 *   table keyed by (parent, level), its '+' and '#' children through pointers. A
 *   node holds the subscriptions whose filter ends there, and is freed as soon as
 *   it holds no subscription and has no child.
 * - A client (a hash table by client id) lists its subscriptions, so that one
 *   client's subscriptions go when it disconnects without looking at the others.
 * - Matching walks the topic's levels through the exact and '+' children, taking
 *   every '#' child on the way ("a/#" matches "a" too). Topics starting with '$'
 *   are not matched by filters starting with a wildcard. Each client with a match
 *   is reported once, at the best qos of its matching subscriptions.
 *
 * SPDX-License-Identifier: Apache-2.0
 */

#include <stdlib.h>
#include <string.h>

#include "mmc_plugin.h"

#ifndef MMC_BROKER_2_1

#define INITIAL_BUCKETS 64

/* First member of a node and a client: what the hash tables chain. */
struct st_entry {
	struct st_entry *hnext;
	size_t hash;
};

struct st_table {
	struct st_entry **buckets;
	size_t size;   /* a power of two, or 0 before the first insert */
	size_t count;
};

struct st_sub;

struct st_node {
	struct st_entry entry;      /* in nodes, for exact levels only */
	struct st_node *parent;
	struct st_node *plus;       /* the '+' child */
	struct st_node *pound;      /* the '#' child */
	struct st_sub *subs;        /* filters ending here, one per client */
	size_t children;            /* exact children (in nodes) */
	size_t len;
	char level[];
};

struct st_client {
	struct st_entry entry;      /* in clients */
	struct st_sub *subs;
	/* One match: the clients found, each once, with their best qos. */
	struct st_client *matched_next;
	unsigned long match_gen;
	int match_qos;
	char clientid[];
};

struct st_sub {
	struct st_client *client;
	struct st_node *node;
	struct st_sub *node_next, *node_prev;
	struct st_sub *client_next, *client_prev;
	struct mmc_sub_options options;
};

static struct {
	struct st_node root;
	struct st_table nodes;
	struct st_table clients;
	size_t count;
	size_t max;
	unsigned long gen;
	struct st_client *matched;
} st;

/* ------------------------------------------------------------ hash tables */

static size_t hash_bytes(const char *s, size_t len, size_t seed)
{
	uint64_t h = 1469598103934665603ULL ^ seed;
	size_t i;

	for(i = 0; i < len; i++){
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return (size_t)(h ^ (h >> 29));
}

static size_t node_hash(const struct st_node *parent, const char *level, size_t len)
{
	return hash_bytes(level, len, (size_t)(uintptr_t)parent * (size_t)0x9E3779B97F4A7C15ULL);
}

static bool table_grow(struct st_table *t)
{
	size_t n = t->size ? t->size * 2 : INITIAL_BUCKETS;
	struct st_entry **buckets = calloc(n, sizeof(*buckets));
	struct st_entry *e, *next;
	size_t i;

	if(buckets == NULL) return false;
	for(i = 0; i < t->size; i++){
		for(e = t->buckets[i]; e; e = next){
			next = e->hnext;
			e->hnext = buckets[e->hash & (n - 1)];
			buckets[e->hash & (n - 1)] = e;
		}
	}
	free(t->buckets);
	t->buckets = buckets;
	t->size = n;
	return true;
}

/* False only when there is no bucket array at all: a failed growth keeps longer chains. */
static bool table_insert(struct st_table *t, struct st_entry *e)
{
	if(t->count >= t->size && !table_grow(t) && t->buckets == NULL){
		return false;
	}
	e->hnext = t->buckets[e->hash & (t->size - 1)];
	t->buckets[e->hash & (t->size - 1)] = e;
	t->count++;
	return true;
}

static void table_unlink(struct st_table *t, struct st_entry *e)
{
	struct st_entry **link = &t->buckets[e->hash & (t->size - 1)];

	for(; *link; link = &(*link)->hnext){
		if(*link == e){
			*link = e->hnext;
			t->count--;
			return;
		}
	}
}

static struct st_entry *bucket(const struct st_table *t, size_t hash)
{
	return t->size ? t->buckets[hash & (t->size - 1)] : NULL;
}

/* ------------------------------------------------------------------ nodes */

static struct st_node *exact_child(const struct st_node *parent, const char *level, size_t len)
{
	size_t hash = node_hash(parent, level, len);
	struct st_entry *e;
	struct st_node *node;

	for(e = bucket(&st.nodes, hash); e; e = e->hnext){
		node = (struct st_node *)e;
		if(e->hash == hash && node->parent == parent && node->len == len
				&& !memcmp(node->level, level, len)){
			return node;
		}
	}
	return NULL;
}

static bool is_wildcard(const char *level, size_t len, char which)
{
	return len == 1 && level[0] == which;
}

static struct st_node *child(const struct st_node *parent, const char *level, size_t len)
{
	if(is_wildcard(level, len, '+')) return parent->plus;
	if(is_wildcard(level, len, '#')) return parent->pound;
	return exact_child(parent, level, len);
}

static struct st_node *add_child(struct st_node *parent, const char *level, size_t len)
{
	struct st_node *node = calloc(1, sizeof(*node) + len + 1);

	if(node == NULL) return NULL;
	node->parent = parent;
	node->len = len;
	memcpy(node->level, level, len);
	if(is_wildcard(level, len, '+')){
		parent->plus = node;
	}else if(is_wildcard(level, len, '#')){
		parent->pound = node;
	}else{
		node->entry.hash = node_hash(parent, level, len);
		if(!table_insert(&st.nodes, &node->entry)){
			free(node);
			return NULL;
		}
		parent->children++;
	}
	return node;
}

/* Free node and its ancestors while they hold nothing. */
static void prune(struct st_node *node)
{
	struct st_node *parent;

	while(node != &st.root && node->subs == NULL && node->children == 0
			&& node->plus == NULL && node->pound == NULL){
		parent = node->parent;
		if(parent->plus == node){
			parent->plus = NULL;
		}else if(parent->pound == node){
			parent->pound = NULL;
		}else{
			table_unlink(&st.nodes, &node->entry);
			parent->children--;
		}
		free(node);
		node = parent;
	}
}

/* The node of filter (a valid filter); with create, made as needed (NULL: out of memory,
 * nothing left behind); without, NULL when there is none. */
static struct st_node *filter_node(const char *filter, bool create)
{
	struct st_node *node = &st.root, *next;
	const char *level = filter, *end;
	size_t len;

	for(;;){
		end = strchr(level, '/');
		len = end ? (size_t)(end - level) : strlen(level);
		next = child(node, level, len);
		if(next == NULL){
			if(!create) return NULL;
			next = add_child(node, level, len);
			if(next == NULL){
				prune(node);
				return NULL;
			}
		}
		node = next;
		if(end == NULL) return node;
		level = end + 1;
	}
}

/* ---------------------------------------------------------------- clients */

static struct st_client *find_client(const char *clientid)
{
	size_t hash = hash_bytes(clientid, strlen(clientid), 0);
	struct st_entry *e;

	for(e = bucket(&st.clients, hash); e; e = e->hnext){
		if(e->hash == hash && !strcmp(((struct st_client *)e)->clientid, clientid)){
			return (struct st_client *)e;
		}
	}
	return NULL;
}

static struct st_client *add_client(const char *clientid)
{
	size_t len = strlen(clientid);
	struct st_client *client = calloc(1, sizeof(*client) + len + 1);

	if(client == NULL) return NULL;
	memcpy(client->clientid, clientid, len);
	client->entry.hash = hash_bytes(clientid, len, 0);
	if(!table_insert(&st.clients, &client->entry)){
		free(client);
		return NULL;
	}
	return client;
}

static void free_client(struct st_client *client)
{
	table_unlink(&st.clients, &client->entry);
	free(client);
}

static void unlink_sub(struct st_sub *sub)
{
	struct st_node *node = sub->node;
	struct st_client *client = sub->client;

	if(sub->node_prev) sub->node_prev->node_next = sub->node_next;
	else node->subs = sub->node_next;
	if(sub->node_next) sub->node_next->node_prev = sub->node_prev;
	if(sub->client_prev) sub->client_prev->client_next = sub->client_next;
	else client->subs = sub->client_next;
	if(sub->client_next) sub->client_next->client_prev = sub->client_prev;
	free(sub);
	st.count--;
	prune(node);
}

/* --------------------------------------------------------------- the API */

void mmc_subs_init(size_t max_subscriptions)
{
	mmc_subs_free();
	st.max = max_subscriptions;
}

size_t mmc_subs_count(void)
{
	return st.count;
}

const char *mmc_subs_add(const char *clientid, const char *filter, const struct mmc_sub_options *options)
{
	struct st_client *client = find_client(clientid);
	struct st_node *node;
	struct st_sub *sub;

	if(client){
		node = filter_node(filter, false);
		for(sub = node ? node->subs : NULL; sub; sub = sub->node_next){
			if(sub->client == client){
				sub->options = *options;   /* as a second MQTT SUBSCRIBE replaces the first */
				return NULL;
			}
		}
	}
	if(st.max && st.count >= st.max){
		return "Too many subscriptions";
	}
	if(client == NULL && (client = add_client(clientid)) == NULL){
		return MMC_ERR_NOMEM;
	}
	node = filter_node(filter, true);
	sub = node ? calloc(1, sizeof(*sub)) : NULL;
	if(sub == NULL){
		if(node) prune(node);
		if(client->subs == NULL) free_client(client);
		return MMC_ERR_NOMEM;
	}
	sub->client = client;
	sub->node = node;
	sub->options = *options;
	sub->node_next = node->subs;
	if(node->subs) node->subs->node_prev = sub;
	node->subs = sub;
	sub->client_next = client->subs;
	if(client->subs) client->subs->client_prev = sub;
	client->subs = sub;
	st.count++;
	return NULL;
}

void mmc_subs_remove(const char *clientid, const char *filter)
{
	struct st_client *client = find_client(clientid);
	struct st_node *node;
	struct st_sub *sub;

	if(client == NULL || (node = filter_node(filter, false)) == NULL){
		return;
	}
	for(sub = node->subs; sub; sub = sub->node_next){
		if(sub->client == client){
			unlink_sub(sub);
			break;
		}
	}
	if(client->subs == NULL){
		free_client(client);
	}
}

void mmc_subs_remove_client(const char *clientid)
{
	struct st_client *client = find_client(clientid);

	if(client == NULL) return;
	while(client->subs){
		unlink_sub(client->subs);
	}
	free_client(client);
}

void mmc_subs_free(void)
{
	struct st_client *client;
	size_t i;

	for(i = 0; i < st.clients.size; i++){
		while(st.clients.buckets[i]){
			client = (struct st_client *)st.clients.buckets[i];
			while(client->subs){
				unlink_sub(client->subs);
			}
			free_client(client);
		}
	}
	/* Every node held a subscription or a child: none is left. */
	free(st.clients.buckets);
	free(st.nodes.buckets);
	memset(&st, 0, sizeof(st));
}

static void collect(const struct st_node *node, const char *sender)
{
	const struct st_sub *sub;
	struct st_client *client;
	int qos;

	for(sub = node->subs; sub; sub = sub->node_next){
		client = sub->client;
		if(sub->options.no_local && sender && !strcmp(sender, client->clientid)){
			continue;
		}
		qos = sub->options.qos;
		if(client->match_gen != st.gen){
			client->match_gen = st.gen;
			client->match_qos = qos;
			client->matched_next = st.matched;
			st.matched = client;
		}else if(qos > client->match_qos){
			client->match_qos = qos;
		}
	}
}

/* level: the topic from the level node's children are matched against; NULL past its end. */
static void walk(const struct st_node *node, const char *level, const char *sender)
{
	const char *end;
	size_t len;

	for(;;){
		if(node->pound){
			collect(node->pound, sender);  /* the rest of the topic, or none of it */
		}
		if(level == NULL){
			collect(node, sender);
			return;
		}
		end = strchr(level, '/');
		len = end ? (size_t)(end - level) : strlen(level);
		if(node->plus){
			walk(node->plus, end ? end + 1 : NULL, sender);
		}
		node = exact_child(node, level, len);
		if(node == NULL){
			return;
		}
		level = end ? end + 1 : NULL;
	}
}

void mmc_subs_match(const char *topic, const char *sender, mmc_subs_deliver_fn deliver, void *arg)
{
	struct st_client *client, *next;
	const struct st_node *first;
	const char *end;

	if(st.count == 0){
		return;
	}
	st.gen++;
	st.matched = NULL;
	if(topic[0] == '$'){
		/* MQTT 4.7.2: a filter starting with a wildcard does not match a '$' topic. */
		end = strchr(topic, '/');
		first = exact_child(&st.root, topic, end ? (size_t)(end - topic) : strlen(topic));
		if(first){
			walk(first, end ? end + 1 : NULL, sender);
		}
	}else{
		walk(&st.root, topic, sender);
	}
	for(client = st.matched; client; client = next){
		next = client->matched_next;
		deliver(client->clientid, client->match_qos, arg);
	}
	st.matched = NULL;
}

#endif /* !MMC_BROKER_2_1 */
