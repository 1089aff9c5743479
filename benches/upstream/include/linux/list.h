/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * pagebuddy's user-space stand-in for the kernel's <linux/list.h>: the circular doubly linked
 * list operations upstream pKVM's page_alloc.c uses, with the kernel's semantics when
 * CONFIG_DEBUG_LIST is off (no validity checks): the same stores in the same order, and the
 * same ones volatile (the kernel's WRITE_ONCE: a list's own `next` when it is initialised,
 * `prev->next` when a node is added or removed; READ_ONCE of `head->next` in list_empty).
 * Removal leaves the removed node's pointers as they were (page_alloc.c clears the node
 * itself, with memset).
 */
#ifndef PAGEBUDDY_SHIM_LINUX_LIST_H
#define PAGEBUDDY_SHIM_LINUX_LIST_H

#include <linux/types.h>

#ifndef WRITE_ONCE
#define WRITE_ONCE(x, val) do { *(volatile __typeof__(x) *)&(x) = (val); } while (0)
#endif
#ifndef READ_ONCE
#define READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#endif

#define LIST_HEAD_INIT(name) { &(name), &(name) }

static inline void INIT_LIST_HEAD(struct list_head *list)
{
	WRITE_ONCE(list->next, list);
	WRITE_ONCE(list->prev, list);
}

static inline void __list_add(struct list_head *new, struct list_head *prev,
			      struct list_head *next)
{
	next->prev = new;
	new->next = next;
	new->prev = prev;
	WRITE_ONCE(prev->next, new);
}

static inline void list_add(struct list_head *new, struct list_head *head)
{
	__list_add(new, head, head->next);
}

static inline void list_add_tail(struct list_head *new, struct list_head *head)
{
	__list_add(new, head->prev, head);
}

static inline void __list_del(struct list_head *prev, struct list_head *next)
{
	next->prev = prev;
	WRITE_ONCE(prev->next, next);
}

static inline void __list_del_entry(struct list_head *entry)
{
	__list_del(entry->prev, entry->next);
}

static inline int list_empty(const struct list_head *head)
{
	return READ_ONCE(head->next) == head;
}

#endif /* PAGEBUDDY_SHIM_LINUX_LIST_H */
