import { Matches } from "class-validator";
import { Arg, ArgsType, Args, Authorized, Field, Mutation, ObjectType, Query, Resolver } from "type-graphql";
import type { ApiServices } from "../context";

@ObjectType({ description: "A scheduled job (Agenda, on Relevo's Redis): runs once per due time across all service instances." })
export class Schedule {
  @Field({ description: "full-backup, differential-backup, incremental-backup or verify-newest." }) name!: string;
  @Field() description!: string;
  @Field(() => String, { nullable: true, description: "Cron expression, UTC; null when not scheduled." }) cron!: string | null;
  @Field() paused!: boolean;
  @Field(() => String, { nullable: true }) nextRunAt!: string | null;
  @Field(() => String, { nullable: true }) lastRunAt!: string | null;
  @Field(() => String, { nullable: true }) lastFinishedAt!: string | null;
  @Field(() => String, { nullable: true }) lastFailure!: string | null;
}

@ArgsType()
class ScheduleCronArgs {
  @Field() name!: string;

  @Field({ description: "5-field cron expression, UTC." })
  @Matches(/^(\S+\s+){4}\S+$/, { message: "cron must be a 5-field cron expression" })
  cron!: string;
}

@Resolver()
export class ScheduleResolver {
  constructor(private readonly services: ApiServices) {}

  @Authorized("viewer")
  @Query(() => [Schedule], { description: "Scheduled backups and verification." })
  async schedules(): Promise<Schedule[]> {
    return this.services.scheduler.list();
  }

  @Authorized("operator")
  @Mutation(() => [Schedule], { description: "Creates or changes a job's schedule." })
  async updateSchedule(@Args(() => ScheduleCronArgs) args: ScheduleCronArgs): Promise<Schedule[]> {
    await this.services.scheduler.update(args.name, args.cron);
    return this.schedules();
  }

  @Authorized("operator")
  @Mutation(() => [Schedule], { description: "Pauses (or resumes) a job's schedule." })
  async pauseSchedule(
    @Arg("name") name: string,
    @Arg("paused", () => Boolean, { defaultValue: true }) paused: boolean,
  ): Promise<Schedule[]> {
    await this.services.scheduler.pause(name, paused);
    return this.schedules();
  }

  @Authorized("operator")
  @Mutation(() => [Schedule], { description: "Removes a job's schedule (updateSchedule creates it again)." })
  async deleteSchedule(@Arg("name") name: string): Promise<Schedule[]> {
    await this.services.scheduler.remove(name);
    return this.schedules();
  }

  @Authorized("operator")
  @Mutation(() => Boolean, {
    description: "Runs a scheduled job now, once, through the scheduler (skipped, and recorded, if a backup is running).",
  })
  async runScheduleNow(@Arg("name") name: string): Promise<boolean> {
    await this.services.scheduler.runNow(name);
    return true;
  }
}
